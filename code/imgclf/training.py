"""The training job: data -> model -> epochs (with checkpoints) -> best model -> test -> artifact.

``main(argv)`` is what ``code/train.py`` calls, under SageMaker's ``train`` entry or on a laptop::

    python code/train.py --data-dir sample_data/fashion --model-dir model --epochs 3 --weights none
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import sys
import threading
import time

import numpy as np
import torch
from torch import nn

from imgclf import checkpoint, diagnostics, distributed, images
from imgclf.artifact import IMAGENET_MEAN, IMAGENET_STD, ModelMeta, save_artifact
from imgclf.callbacks import CallbackList, TrainContext
from imgclf.config import args_to_dict, parse_args
from imgclf.data import build_samples, make_loaders, resolve_splits
from imgclf.engine import evaluate, set_epoch, train_one_epoch
from imgclf.failure import TrainingError, fail, write_failure
from imgclf.metrics import format_epoch_line, format_test_line
from imgclf.models import build_model
from imgclf.report import plot_learning_curves, write_metrics
from imgclf.transforms import default_resize_size

log = logging.getLogger("imgclf")


def setup_logging(is_main: bool = True) -> None:
    logging.basicConfig(stream=sys.stdout, force=True,
                        level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_weights(weights: str) -> str:
    if weights != "auto":
        return weights
    pretrained = os.environ.get("SM_CHANNEL_PRETRAINED")
    return pretrained if pretrained else "imagenet"


def resolve_amp(amp: str, device: torch.device):
    """(autocast dtype or None, GradScaler or None)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None, None
    if amp == "fp16" or (amp == "auto"
                        and not torch.cuda.is_bf16_supported(including_emulation=False)):
        if device.type != "cuda":
            raise TrainingError("amp=fp16 needs a CUDA device; use amp=bf16 or amp=off on CPU")
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


def make_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum,
                           weight_decay=args.weight_decay, nesterov=args.momentum > 0)


def make_scheduler(optimizer, args, steps_per_epoch: int):
    """Per-step LambdaLR: linear warmup + cosine, step decay, or constant."""
    total = max(1, args.epochs * steps_per_epoch)
    warmup = int(args.warmup_epochs * steps_per_epoch) if args.lr_schedule == "cosine" else 0

    def factor(step: int) -> float:
        if args.lr_schedule == "step":
            return args.gamma ** ((step // max(1, steps_per_epoch)) // args.step_size)
        if args.lr_schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_bad_images(bad: list[str], n_bad: int, good: int, split: str, max_fraction: float,
                     reported: set) -> None:
    """Log newly skipped files (``bad``: this rank's); fail when too large a share of the images
    read on all ranks (``n_bad`` unreadable, ``good`` decoded) was unreadable."""
    new = [b for b in bad if b not in reported]
    reported.update(new)
    if new:
        log.warning("skipped %d unreadable image(s) in %s, e.g. %s", len(new), split,
                    "; ".join(new[:3]))
    seen = good + n_bad
    if seen and n_bad / seen > max_fraction:
        raise TrainingError(f"{n_bad} of {seen} {split} images read cannot be decoded (over "
                            f"max-bad-fraction={max_fraction}), e.g. {'; '.join(bad[:3])}")


class Stopped(TrainingError):
    """SIGTERM: SageMaker stopping the job (or a spot interruption), or torchrun ending the
    other ranks of a failed job. Raised in the loop so the reports are still written."""


@contextlib.contextmanager
def raise_on_sigterm():
    """SIGTERM raises :class:`Stopped` in the loop while training runs (main thread only);
    the previous handler is back afterwards (in-process callers such as the benchmarks)."""
    def handler(signum, frame):
        raise Stopped(f"stopped by {signal.Signals(signum).name}")
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resume_state(args, classes, loaders, info) -> dict | None:
    """Rank 0 reads (or refuses) the checkpoint; every rank gets the same answer."""
    now = checkpoint.horizon(args_to_dict(args), len(loaders["train"]))
    return distributed.from_rank0(
        lambda: checkpoint.load_latest(args.checkpoint_dir, classes, args_to_dict(args), now))


def run(args) -> int:
    images.max_pixels()  # a bad IMGCLF_MAX_PIXELS is the failure reason, not every image's
    info = distributed.init()
    setup_logging(info.is_main)
    device = (torch.device("cuda", info.local_rank) if torch.cuda.is_available()
              else torch.device("cpu"))
    seed_everything(args.seed + info.rank)

    splits = resolve_splits(args.data_dir, args.train_dir, args.valid_dir, args.test_dir)
    classes, samples = build_samples(splits)
    test_split = "test"
    if "test" not in samples:
        log.warning("no test split: 'average test loss' is computed on the validation split")
        test_split = "valid"
    log.info("data: %d classes; %s", len(classes),
             ", ".join(f"{s}={len(v)} images" for s, v in samples.items()))
    resize = args.resize_size or default_resize_size(args.image_size)
    loaders = make_loaders(samples, args.image_size, args.batch_size, args.num_workers,
                           info.rank, info.world, args.seed, pin_memory=device.type == "cuda",
                           crop_scale=args.crop_scale, resize_size=resize)

    weights = resolve_weights(args.weights)
    model = build_model(args.arch, len(classes), weights, args.freeze_backbone).to(device)
    channels_last = args.channels_last == "true" or (args.channels_last == "auto"
                                                     and device.type == "cuda")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype, scaler = resolve_amp(args.amp, device)
    optimizer = make_optimizer(model, args)
    scheduler = make_scheduler(optimizer, args, len(loaders["train"]))
    horizon = checkpoint.horizon(args_to_dict(args), len(loaders["train"]))
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    train_model = (nn.parallel.DistributedDataParallel(
        model, device_ids=[info.local_rank] if device.type == "cuda" else None)
        if info.enabled else model)
    log.info("model: %s (weights=%s, freeze_backbone=%s) on %s, amp=%s, channels_last=%s, "
             "world=%d", args.arch, weights, args.freeze_backbone, device,
             amp_dtype, channels_last, info.world)

    history: list[dict] = []
    best = {"valid_loss": math.inf, "epoch": None}
    best_state = None   # the best epoch's weights (CPU copy), always from the same epoch as best
    start_epoch, global_step = 1, 0
    state = resume_state(args, classes, loaders, info)
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        history, best, best_state = state["history"], state["best"], state["best_state"]
        start_epoch, global_step = state["epoch"] + 1, state["global_step"]
        if info.world > 1:  # the checkpoint holds rank 0's RNG: give every rank its own again
            seed_everything(args.seed + info.rank + 1000 * start_epoch)
        log.info("resuming from %s at epoch %d (best so far: epoch %s, valid_loss %.4f)",
                 args.checkpoint_dir, start_epoch, best["epoch"], best["valid_loss"])
        del state

    ctx = TrainContext(model=model, optimizer=optimizer, criterion=criterion, args=args,
                       device=device, output_dir=args.output_data_dir, is_main=info.is_main,
                       num_classes=len(classes), global_step=global_step,
                       steps_per_epoch=len(loaders["train"]), epoch=start_epoch - 1,
                       history=history)
    callbacks = CallbackList(diagnostics.build_callbacks(args))
    norm = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    fast = dict(amp_dtype=amp_dtype, channels_last=channels_last)
    reported: set = set()
    progress = args.progress == "true" or (args.progress == "auto" and sys.stderr.isatty())

    try:
        callbacks.on_train_begin(ctx)
        for epoch in range(start_epoch, args.epochs + 1):
            ctx.epoch = epoch
            set_epoch(loaders["train"], epoch, args.seed)
            callbacks.on_epoch_begin(ctx, epoch)
            tr = train_one_epoch(train_model, loaders["train"], criterion, optimizer, scheduler,
                                 scaler, ctx, callbacks, progress=progress and info.is_main,
                                 epoch=epoch, **norm, **fast)
            check_bad_images(tr["bad"], tr["bad_count"], tr["images"], "train",
                             args.max_bad_fraction, reported)
            ev = evaluate(model, loaders["valid"], criterion, ctx, callbacks, mode="eval",
                          **norm, **fast)
            check_bad_images(ev["bad"], ev["bad_count"], ev["images"], "valid",
                             args.max_bad_fraction, reported)
            metrics = {"epoch": epoch, "train_loss": tr["loss"], "valid_loss": ev["loss"],
                       "valid_acc": ev["acc"], "lr": optimizer.param_groups[0]["lr"],
                       "epoch_time": tr["time"],
                       "images_per_sec": tr["images"] / max(1e-9, tr["time"])}
            history.append(metrics)
            if info.is_main:
                print(format_epoch_line(epoch, args.epochs, tr["loss"], ev["loss"], ev["acc"],
                                        tr["time"], metrics["images_per_sec"]), flush=True)
            if ev["loss"] < best["valid_loss"]:
                best = {"valid_loss": ev["loss"], "epoch": epoch, "valid_acc": ev["acc"]}
                best_state = {k: v.detach().to("cpu", copy=True)
                              for k, v in model.state_dict().items()}
            if info.is_main:
                checkpoint.save(args.checkpoint_dir, model=model, optimizer=optimizer,
                                scheduler=scheduler, scaler=scaler, epoch=epoch,
                                global_step=ctx.global_step, args=args_to_dict(args),
                                classes=classes, history=history, best=best,
                                best_state=best_state, horizon=horizon)
                log.info("checkpoint saved: epoch %d -> %s", epoch, args.checkpoint_dir)
            callbacks.on_epoch_end(ctx, epoch, metrics)
            if args.patience and best["epoch"] is not None and epoch - best["epoch"] >= args.patience:
                ctx.stop_reason = ctx.stop_reason or (
                    f"early stopping: no better valid loss for {args.patience} epoch(s)")
            if distributed.any_rank(bool(ctx.stop_reason), device):
                ctx.stop_reason = ctx.stop_reason or "stop requested on another rank"
                log.info("stopping after epoch %d: %s", epoch, ctx.stop_reason)
                break

        # The artifact's weights and its metadata come from the same epoch: the best one, or
        # the last one when no epoch had a finite validation loss.
        weights_epoch = best["epoch"] if best_state is not None else (
            history[-1]["epoch"] if history else None)
        if best_state is not None:
            model.load_state_dict(best_state)
        elif history:
            log.warning("no epoch had a finite validation loss: the artifact holds the last "
                        "epoch (%s)", weights_epoch)
        # --- test evaluation of the best model ---
        te = evaluate(model, loaders[test_split], criterion, ctx, callbacks, mode="test",
                      **norm, **fast)
        check_bad_images(te["bad"], te["bad_count"], te["images"], test_split,
                         args.max_bad_fraction, reported)
        final = {"test_loss": te["loss"], "test_acc": te["acc"], "best_epoch": best["epoch"],
                 "weights_epoch": weights_epoch,
                 "best_valid_loss": best["valid_loss"], "best_valid_acc": best.get("valid_acc"),
                 "epochs_run": len(history), "stop_reason": ctx.stop_reason,
                 "skipped_images": len(reported)}
        if info.is_main:
            print(format_test_line(te["loss"], te["acc"]), flush=True)
            meta = ModelMeta(arch=args.arch, classes=classes, image_size=args.image_size,
                             resize_size=resize,
                             hyperparameters=args_to_dict(args), metrics=final)
            state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_artifact(args.model_dir, state_dict, meta)
            write_metrics(args.output_data_dir, history, final)
            if history:
                plot_learning_curves(args.output_data_dir, history, best["epoch"])
            log.info("saved the model of epoch %s to %s; reports in %s", weights_epoch,
                     args.model_dir, args.output_data_dir)
        # -- evaluation report of the best model on the test split (every rank predicts its
        #    shard, rank 0 writes SM_OUTPUT_DATA_DIR/evaluation/; see imgclf.evaluation) ----
        from imgclf.evaluation import evaluate_job
        evaluate_job(model, samples[test_split], classes, getattr(splits, test_split),
                     os.path.join(args.output_data_dir, "evaluation"), device=device,
                     image_size=args.image_size, resize_size=resize,
                     **norm, batch_size=args.batch_size, num_workers=args.num_workers,
                     rank=info.rank, world=info.world)
        # -- end of the evaluation report ------------------------------------------------------
    except BaseException as e:
        callbacks.on_exception(ctx, e)
        raise
    callbacks.on_train_end(ctx, final)
    return 0


def _early_output_dir(argv: list[str]) -> str | None:
    """SM_OUTPUT_DIR or --output-dir, readable even when the rest of argv is bad."""
    for i, a in enumerate(argv):
        if a in ("--output-dir", "--output_dir") and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(("--output-dir=", "--output_dir=")):
            return a.split("=", 1)[1]
    return os.environ.get("SM_OUTPUT_DIR")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        args = parse_args(argv)
    except TrainingError as e:
        return fail(_early_output_dir(argv), e)
    code = distributed.maybe_relaunch(argv, args.processes_per_host, args.master_port)
    if code is not None:
        if code != 0 and args.output_dir and not os.path.exists(os.path.join(args.output_dir, "failure")):
            write_failure(args.output_dir, f"distributed training failed with exit code {code}; "
                                           f"see the job log")
        return code
    started = time.time()
    try:
        with raise_on_sigterm():
            return run(args)
    except Exception as e:
        # under DDP every rank reports the first rank's reason (see distributed.shared_failure)
        return fail(args.output_dir, e, reason=distributed.shared_failure)
    finally:
        distributed.cleanup()
        log.info("train.py finished in %.1fs", time.time() - started)
