"""Per-epoch checkpoints that a restarted (spot) job resumes from.

``checkpoint.pt`` (latest epoch) holds model, optimizer, scheduler, AMP scaler, epoch, global
step, RNG states, args, class names and the metric history. ``best.pt`` holds the weights of the
best epoch by validation loss, so a resumed run still ends with the best model, not the last.
Both are written to a temp file and renamed, so a kill mid-write never leaves a torn file.
"""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from imgclf.failure import TrainingError

log = logging.getLogger(__name__)

LATEST = "checkpoint.pt"
BEST = "best.pt"


def _atomic_save(obj, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(checkpoint_dir: str, *, model, optimizer, scheduler, scaler, epoch: int,
         global_step: int, args: dict, classes: list[str], history: list[dict],
         best: dict) -> None:
    _atomic_save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch, "global_step": global_step, "args": args, "classes": classes,
        "history": history, "best": best, "rng": rng_state(),
    }, os.path.join(checkpoint_dir, LATEST))


def save_best(checkpoint_dir: str, model) -> None:
    _atomic_save(model.state_dict(), os.path.join(checkpoint_dir, BEST))


def load_best(checkpoint_dir: str):
    path = os.path.join(checkpoint_dir, BEST)
    return torch.load(path, map_location="cpu", weights_only=True) if os.path.isfile(path) else None


#: Hyperparameters a resumed run must share with its checkpoint (epochs may grow: extend a run).
RESUME_MUST_MATCH = ("arch", "lr", "batch_size", "optimizer", "momentum", "weight_decay",
                     "label_smoothing", "lr_schedule", "image_size", "freeze_backbone")


def load_latest(checkpoint_dir: str, classes: list[str], args: dict) -> dict | None:
    """The latest checkpoint if there is one for this dataset and these hyperparameters, else
    None; one from another run (other classes or hyperparameters) is refused."""
    path = os.path.join(checkpoint_dir, LATEST)
    if not os.path.isfile(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise TrainingError(f"checkpoint {path} is unreadable ({e}); delete it to start over") from e
    saved = state.get("args", {})
    differ = [f"{k}={saved.get(k)!r} (now {args.get(k)!r})" for k in RESUME_MUST_MATCH
              if saved.get(k) != args.get(k)]
    if state.get("classes") != classes:
        differ.insert(0, f"{len(state.get('classes') or [])} classes (now {len(classes)})")
    if differ:
        raise TrainingError(f"checkpoint {path} belongs to another run: {'; '.join(differ)}. "
                            f"Use an empty --checkpoint-dir, or delete it to start over")
    return state
