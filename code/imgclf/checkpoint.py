"""The per-epoch checkpoint that a restarted (spot) job resumes from.

ONE file, ``checkpoint.pt``, holds everything a restart needs, so nothing can disagree after
SageMaker's CheckpointConfig has synced part of a folder: model, optimizer, LR scheduler, AMP
scaler, epoch and global step, RNG states (torch, CUDA, numpy, Python), the args, class names,
the metric history, the best epoch's weights with its record (``best_state``/``best``) and the
schedule horizon (steps per epoch, total steps). It is written atomically
(:func:`imgclf.atomic.atomic_torch_save`: temp file, fsync, rename, fsync of the folder) and
only holds tensors and plain Python values, so it loads with ``weights_only=True``.

A checkpoint is refused, with the differences named, when anything that changes the
optimisation differs (see :func:`differences`). The rule for ``epochs``: with the cosine
schedule the horizon (epochs x steps per epoch) shapes every step's learning rate, so a
different ``epochs`` is refused (extend with a new run from the artifact, ``--weights
model.pt``); with ``step`` and ``constant`` it may grow, extending a finished run.
"""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from imgclf.atomic import atomic_torch_save
from imgclf.failure import TrainingError
from imgclf.config import DEFAULT_CROP_SCALE

log = logging.getLogger(__name__)

LATEST = "checkpoint.pt"
FORMAT = 2   # 1: checkpoint.pt + best.pt, pickled numpy RNG (weights_only=False)

#: Hyperparameters every resume must share with its checkpoint.
RESUME_MUST_MATCH = ("arch", "lr", "batch_size", "optimizer", "weight_decay", "label_smoothing",
                     "lr_schedule", "image_size", "crop_scale", "freeze_backbone", "seed")
#: Values for names added after a checkpoint was written (its run used the default then).
ADDED_LATER = {"crop_scale": DEFAULT_CROP_SCALE}
#: ... and those that only matter for some settings: name -> when it matters.
RESUME_MUST_MATCH_IF = {
    "momentum": lambda a: a.get("optimizer") == "sgd",
    "warmup_epochs": lambda a: a.get("lr_schedule") == "cosine",
    "epochs": lambda a: a.get("lr_schedule") == "cosine",   # the cosine horizon
    "step_size": lambda a: a.get("lr_schedule") == "step",
    "gamma": lambda a: a.get("lr_schedule") == "step",
}


def rng_state() -> dict:
    """Every RNG the loop draws from, as tensors and plain values (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def horizon(args: dict, steps_per_epoch: int) -> dict:
    """What fixes the learning rate of every step besides the hyperparameters."""
    return {"steps_per_epoch": int(steps_per_epoch),
            "total_steps": int(args["epochs"]) * int(steps_per_epoch)}


def save(checkpoint_dir: str, *, model, optimizer, scheduler, scaler, epoch: int,
         global_step: int, args: dict, classes: list[str], history: list[dict],
         best: dict, best_state: dict | None, horizon: dict) -> str:
    """Write the one checkpoint (rank 0 only)."""
    return atomic_torch_save({
        "format": FORMAT,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch, "global_step": global_step, "args": args, "classes": classes,
        "history": history, "best": best, "best_state": best_state, "horizon": horizon,
        "rng": rng_state(),
    }, os.path.join(checkpoint_dir, LATEST))


def differences(saved_args: dict, args: dict, saved_horizon: dict | None,
                now_horizon: dict | None) -> list[str]:
    """What differs between a checkpoint's run and this one, in words; [] = same optimisation."""
    keys = list(RESUME_MUST_MATCH) + [k for k, cond in RESUME_MUST_MATCH_IF.items()
                                      if cond(args) or cond(saved_args)]
    differ = []
    for k in keys:
        saved = saved_args.get(k, ADDED_LATER.get(k))
        if saved != args.get(k):
            differ.append(f"{k}={saved!r} (now {args.get(k)!r})" + (
                " - it sets the cosine schedule's horizon; extend with a new run from the "
                "artifact (--weights model.pt), or use lr-schedule step/constant"
                if k == "epochs" else ""))
    if saved_horizon and now_horizon and \
            saved_horizon["steps_per_epoch"] != now_horizon["steps_per_epoch"]:
        differ.append(f"{saved_horizon['steps_per_epoch']} steps per epoch (now "
                      f"{now_horizon['steps_per_epoch']}: the train split or the number of "
                      f"processes changed)")
    return differ


def load_latest(checkpoint_dir: str, classes: list[str], args: dict,
                now_horizon: dict | None = None) -> dict | None:
    """The latest checkpoint if it belongs to this run, else None when there is none; one of
    another run (other classes, hyperparameters or schedule) is refused with TrainingError."""
    path = os.path.join(checkpoint_dir, LATEST)
    if not os.path.isfile(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingError(f"checkpoint {path} is unreadable ({str(e).splitlines()[0][:300]}); "
                            f"it may come from an older version of this code; delete it to "
                            f"start over") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingError(f"checkpoint {path} has format {state.get('format', 1)!r} (this "
                            f"code reads {FORMAT}); delete it to start over")
    differ = differences(state.get("args", {}), args, state.get("horizon"), now_horizon)
    if state.get("classes") != classes:
        differ.insert(0, f"{len(state.get('classes') or [])} classes (now {len(classes)})")
    if differ:
        raise TrainingError(f"checkpoint {path} belongs to another run: {'; '.join(differ)}. "
                            f"Use an empty --checkpoint-dir, or delete it to start over")
    return state
