"""One epoch of training and one pass of evaluation."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time

import torch
import torch.distributed as dist

from imgclf import distributed
from imgclf.callbacks import Callback, TrainContext
from imgclf.failure import TrainingError
from imgclf.transforms import normalize

log = logging.getLogger(__name__)


def set_epoch(loader, epoch: int, seed: int) -> None:
    """Per-epoch shuffling that a resumed run reproduces exactly."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    elif getattr(sampler, "generator", None) is not None:
        sampler.generator.manual_seed(seed + epoch)


class Progress:
    """A one-line progress bar on stderr when attached to a terminal; silent otherwise."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled, self.total, self.label, self.start = enabled, total, label, time.perf_counter()

    def update(self, done: int, loss: float) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / max(1, self.total))
        rate = done / max(1e-9, time.perf_counter() - self.start)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/"
                         f"{self.total} loss={loss:.4f} {rate:.1f} it/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def autocast(device: torch.device, amp_dtype):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _to_device(batch, device, mean, std, channels_last):
    x = normalize(batch.images.to(device, non_blocking=True), mean, std, channels_last)
    return x, batch.labels.to(device, non_blocking=True)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one_epoch(model, loader, criterion, optimizer, scheduler, scaler, ctx: TrainContext,
                    callbacks: Callback, *, mean, std, amp_dtype=None, channels_last=False,
                    progress=False, epoch: int = 0) -> dict:
    """Returns {'loss': mean train loss, 'images': n, 'time': s, 'bad': [skipped files]}."""
    model.train()
    device = ctx.device
    total_loss = torch.zeros((), device=device)
    n_images, bad = 0, []
    bar = Progress(progress, len(loader), f"epoch {epoch} train")
    start = end = time.perf_counter()
    for i, batch in enumerate(loader):
        data_time = time.perf_counter() - end
        bad.extend(batch.bad)
        if batch.labels.numel() == 0:
            if distributed.enabled():  # skipping the step here would pair other ranks' all-reduces wrongly
                raise TrainingError(f"all {len(batch.bad)} images of a train batch are unreadable "
                                    f"(e.g. {batch.bad[0]}); remove them from the dataset")
            end = time.perf_counter()
            continue
        callbacks.on_step_begin(ctx, "train", ctx.global_step)
        x, y = _to_device(batch, device, mean, std, channels_last)
        with autocast(device, amp_dtype):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        loss_value = loss.item()  # one sync per step: the metric lines and rules need it
        if not math.isfinite(loss_value):
            log.warning("non-finite train loss %s at step %d", loss_value, ctx.global_step)
        callbacks.on_after_backward(ctx, ctx.global_step, loss_value)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        total_loss += loss.detach() * y.size(0)
        n_images += y.size(0)
        _sync(device)
        now = time.perf_counter()
        callbacks.on_step_end(ctx, "train", ctx.global_step, loss_value, y.size(0), data_time,
                              now - end - data_time)
        ctx.global_step += 1
        bar.update(i + 1, loss_value)
        end = now
        if ctx.stop_reason and not distributed.enabled():
            break  # under DDP every rank must run the same steps; training.py stops them together
    bar.close()
    totals = torch.stack([total_loss, torch.tensor(float(n_images), device=device),
                          torch.tensor(float(len(bad)), device=device)])
    if distributed.enabled():
        dist.all_reduce(totals)
    loss_sum, n_all, n_bad = totals.tolist()
    return {"loss": loss_sum / max(1.0, n_all), "images": int(n_all), "bad_count": int(n_bad),
            "time": time.perf_counter() - start, "bad": bad}


@torch.no_grad()
def evaluate(model, loader, criterion, ctx: TrainContext, callbacks: Callback, *, mean, std,
             mode: str = "eval", amp_dtype=None, channels_last=False) -> dict:
    """Mean loss and accuracy over the whole split (summed over DDP ranks)."""
    model.eval()
    device = ctx.device
    sums = torch.zeros(4, device=device)  # loss sum, correct, count, unreadable
    bad = []
    end = time.perf_counter()
    for step, batch in enumerate(loader):
        data_time = time.perf_counter() - end
        bad.extend(batch.bad)
        if batch.labels.numel() == 0:
            continue
        callbacks.on_step_begin(ctx, mode, step)
        x, y = _to_device(batch, device, mean, std, channels_last)
        with autocast(device, amp_dtype):
            logits = model(x)
        loss = criterion(logits.float(), y)
        sums += torch.stack([loss * y.size(0), (logits.argmax(1) == y).sum().float(),
                             torch.tensor(float(y.size(0)), device=device),
                             torch.zeros((), device=device)])
        now = time.perf_counter()
        callbacks.on_step_end(ctx, mode, step, loss.item(), y.size(0), data_time,
                              now - end - data_time)
        end = now
    sums[3] = float(len(bad))
    if distributed.enabled():
        dist.all_reduce(sums)
    loss_sum, correct, n, n_bad = sums.tolist()
    return {"loss": loss_sum / max(1.0, n), "acc": correct / max(1.0, n), "images": int(n),
            "bad_count": int(n_bad), "bad": bad}
