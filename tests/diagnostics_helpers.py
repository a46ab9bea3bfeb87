"""A minimal training loop that calls the Callback methods in the same order as imgclf.training.

Used by the diagnostics tests to drive rules/profiler callbacks on tiny nets and random tensors
(CPU, seconds).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from types import SimpleNamespace

import torch
import torch.nn as nn

from imgclf.callbacks import CallbackList, TrainContext


def make_blobs(n: int, dim: int = 16, classes: int = 4, seed: int = 0, noise: float = 0.5,
               random_labels: bool = False):
    """Gaussian blobs (learnable) or random labels (not learnable)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234)) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + noise * torch.randn(n, dim, generator=g)
    if random_labels:
        y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def mlp(dim: int = 16, hidden: int = 32, classes: int = 4, depth: int = 2, act=nn.ReLU,
        init_std: float | None = None, kaiming: bool = True) -> nn.Module:
    layers = OrderedDict()
    d = dim
    for i in range(depth):
        layers[f"fc{i}"] = nn.Linear(d, hidden)
        layers[f"{act.__name__.lower()}{i}"] = act()
        d = hidden
    layers["head"] = nn.Linear(d, classes)
    model = nn.Sequential(layers)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if init_std is not None:
                nn.init.normal_(m.weight, 0.0, init_std)
            elif kaiming:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def run_loop(model, callbacks, train, valid, epochs=3, batch_size=32, lr=0.01, opt="sgd",
             output_dir="/tmp", data_delay: float = 0.0, args=None, seed: int = 0):
    """Train ``model`` on (x, y) tensors, calling ``callbacks`` like the real loop. Returns ctx."""
    torch.manual_seed(seed)
    crit = nn.CrossEntropyLoss()
    optimizer = (torch.optim.Adam(model.parameters(), lr=lr) if opt == "adam"
                 else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    ctx = TrainContext(model=model, optimizer=optimizer, criterion=crit,
                       args=args or SimpleNamespace(num_workers=0, batch_size=batch_size),
                       device=torch.device("cpu"), output_dir=str(output_dir), num_classes=4)
    cbs = CallbackList(callbacks)
    cbs.on_train_begin(ctx)
    xt, yt = train
    xv, yv = valid
    for epoch in range(1, epochs + 1):
        ctx.epoch = epoch
        cbs.on_epoch_begin(ctx, epoch)
        model.train()
        perm = torch.randperm(len(xt))
        losses, t_epoch = [], time.perf_counter()
        for i in range(0, len(xt), batch_size):
            t0 = time.perf_counter()
            if data_delay:
                time.sleep(data_delay)
            idx = perm[i:i + batch_size]
            xb, yb = xt[idx], yt[idx]
            t1 = time.perf_counter()
            step = ctx.global_step
            cbs.on_step_begin(ctx, "train", step)
            loss = crit(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            cbs.on_after_backward(ctx, step, loss.item())
            optimizer.step()
            t2 = time.perf_counter()
            cbs.on_step_end(ctx, "train", step, loss.item(), len(idx), t1 - t0, t2 - t1)
            losses.append(loss.item())
            ctx.global_step += 1
            if ctx.stop_reason:
                break
        model.eval()
        vl = []
        with torch.no_grad():
            for j, i in enumerate(range(0, len(xv), batch_size)):
                cbs.on_step_begin(ctx, "eval", j)
                t1 = time.perf_counter()
                out = model(xv[i:i + batch_size])
                l = crit(out, yv[i:i + batch_size]).item()
                cbs.on_step_end(ctx, "eval", j, l, len(out), 0.0, time.perf_counter() - t1)
                vl.append(l)
        metrics = {"train_loss": sum(losses) / len(losses), "valid_loss": sum(vl) / len(vl),
                   "valid_acc": 0.0, "epoch_time": time.perf_counter() - t_epoch,
                   "images_per_sec": 0.0, "lr": lr}
        ctx.history.append(metrics)
        cbs.on_epoch_end(ctx, epoch, metrics)
        if ctx.stop_reason:
            break
    cbs.on_train_end(ctx, ctx.history[-1] if ctx.history else {})
    return ctx
