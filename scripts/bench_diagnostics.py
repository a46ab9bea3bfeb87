#!/usr/bin/env python3
"""Overhead of the training diagnostics: the same training with diagnostics off, default, full.

    python scripts/bench_diagnostics.py                       # --bench loop: in-memory, seconds
    python scripts/bench_diagnostics.py --bench train --data-dir sample_data/fashion --repeats 3

``--bench loop`` (default) drives ResNet-18 on in-memory tensors through the Callback methods
exactly like the loop does, alternating blocks of steps per mode many times; it reports the
process CPU time per step (all threads, the profiler's sampler thread included: robust when other
work shares the machine) and the wall time per step (what a dedicated machine sees). It
isolates the diagnostics' cost from data loading and from drift on a shared machine. ``--bench train`` runs ``imgclf.training.main`` per mode on the same data and
seed, interleaving the runs (off, default, full, off, ...); throughput is train images per
second of epoch time, epoch 1 excluded (warm-up), median over repeats. Modes:

- ``off``      --rules False --profiler False --debugger False
- ``default``  the defaults: rules (gradient sample every 10 steps), 1 Hz system sampler
- ``full``     default + torch.profiler trace of 5 steps + smdebug recording (--smdebug-out-dir)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "code"))

MODES = {
    "off": ["--rules", "False", "--profiler", "False", "--debugger", "False"],
    "default": [],
    "full": ["--profiler-trace-steps", "5", "--profiler-trace-start", "3", "--smdebug-out-dir", "{tmp}/smdebug"],
}


def run_once(mode: str, a: argparse.Namespace) -> float:
    from imgclf import training

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--data-dir", a.data_dir, "--model-dir", f"{tmp}/model", "--output-data-dir",
                f"{tmp}/out", "--checkpoint-dir", f"{tmp}/ckpt", "--epochs", str(a.epochs),
                "--batch-size", str(a.batch_size), "--image-size", str(a.image_size),
                "--weights", "none", "--arch", a.arch, "--num-workers", str(a.num_workers),
                "--seed", "0"] + [x.format(tmp=tmp) for x in MODES[mode]]
        quiet = open(os.devnull, "w")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(quiet):
            code = training.main(argv)
        if code != 0:
            raise SystemExit(f"training failed in mode {mode} (exit {code})")
        with open(f"{tmp}/out/metrics.json") as f:
            history = json.load(f)["epochs"]
        epochs = history[1:] or history
    images = sum(e["images_per_sec"] * e["epoch_time"] for e in epochs)
    return images / sum(e["epoch_time"] for e in epochs)


def bench_loop(modes: list[str], a: argparse.Namespace) -> dict:
    """Median seconds per train step for each mode, blocks of ``a.block`` steps interleaved."""
    import time

    import torch
    import torchvision

    from imgclf import diagnostics
    from imgclf.callbacks import CallbackList, TrainContext

    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size)
    y = torch.randint(0, 10, (a.batch_size,))
    parser = argparse.ArgumentParser()
    diagnostics.add_arguments(parser)
    tmp = tempfile.mkdtemp()
    setups = {}
    for m in modes:
        # one model per mode: hooks a mode installs (smdebug) must not slow the others
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        crit = torch.nn.CrossEntropyLoss()
        args = parser.parse_args([v.format(tmp=f"{tmp}/{m}") for v in MODES[m]])
        args.num_workers, args.batch_size = a.num_workers, a.batch_size
        ctx = TrainContext(model=model, optimizer=opt, criterion=crit, args=args,
                           device=torch.device("cpu"), output_dir=f"{tmp}/{m}/out", num_classes=10)
        cbs = CallbackList(diagnostics.build_callbacks(args))
        setups[m] = (ctx, cbs)
    times = {m: [] for m in modes}
    cpu = {m: 0.0 for m in modes}
    in_cb = {m: 0.0 for m in modes}   # wall time inside the callbacks: the direct overhead
    for m in modes:
        setups[m][1].on_train_begin(setups[m][0])
        setups[m][1].on_epoch_begin(setups[m][0], 1)
    for _ in range(a.blocks):
        for m in modes:
            ctx, cbs = setups[m]
            model, opt, crit = ctx.model, ctx.optimizer, ctx.criterion
            c0 = time.process_time()
            for _ in range(a.block):
                t0 = time.perf_counter()
                step = ctx.global_step
                cbs.on_step_begin(ctx, "train", step)
                t1 = time.perf_counter()
                loss = crit(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                t2 = time.perf_counter()
                cbs.on_after_backward(ctx, step, loss.item())
                t3 = time.perf_counter()
                opt.step()
                t4 = time.perf_counter()
                cbs.on_step_end(ctx, "train", step, loss.item(), len(x), 0.0, t4 - t0)
                t5 = time.perf_counter()
                ctx.global_step += 1
                times[m].append(t5 - t0)
                in_cb[m] += (t1 - t0) + (t3 - t2) + (t5 - t4)
            cpu[m] += time.process_time() - c0
    for m in modes:
        ctx, cbs = setups[m]
        cbs.on_epoch_end(ctx, 1, {"train_loss": 1.0, "valid_loss": 1.0})
        cbs.on_train_end(ctx, {})
    # CPU s/step (includes the periodic costs, every 10/100 steps) and median wall s/step
    return {m: (cpu[m] / len(times[m]), statistics.median(times[m]), in_cb[m] / len(times[m]))
            for m in modes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", choices=["loop", "train"], default="loop",
                   help="loop: in-memory step timing (default); train: whole training.main runs")
    p.add_argument("--blocks", type=int, default=6, help="loop: blocks per mode (default: 6)")
    p.add_argument("--block", type=int, default=10, help="loop: steps per block (default: 10)")
    p.add_argument("--data-dir", default="sample_data/fashion", help="train: image-folder dataset")
    p.add_argument("--modes", default="off,default,full", help="comma-separated (off,default,full)")
    p.add_argument("--repeats", type=int, default=2, help="runs per mode (default: 2)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is excluded")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--num-workers", type=int, default=1)
    a = p.parse_args(argv)
    import logging
    logging.disable(logging.WARNING)   # training logs would drown the table
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if a.bench == "loop":
        res = bench_loop(modes, a)
        b_cpu, b_wall, _ = res[modes[0]]
        print(f"resnet18 {a.image_size}px batch {a.batch_size}, {a.blocks}x{a.block} steps per mode, "
              f"{__import__('torch').get_num_threads()} torch threads")
        print(f"{'mode':8s} {'CPU ms/step':>12s} {'ratio':>7s} {'wall ms/step (median)':>22s} "
              f"{'ratio':>7s} {'in callbacks ms/step':>21s} {'% of off step':>14s}")
        for m in modes:
            c, w, cb = res[m]
            print(f"{m:8s} {c * 1000:12.1f} {c / b_cpu:7.3f} {w * 1000:22.1f} {w / b_wall:7.3f} "
                  f"{cb * 1000:21.2f} {100 * cb / b_wall:14.2f}")
        return 0
    results = {m: [] for m in modes}
    for r in range(a.repeats):
        for m in modes:
            ips = run_once(m, a)
            results[m].append(ips)
            print(f"repeat {r + 1} {m:8s} {ips:8.1f} images/s", flush=True)
    base = statistics.median(results[modes[0]])
    print(f"\n{'mode':8s} {'images/s (median)':>18s} {'vs ' + modes[0]:>10s}")
    for m in modes:
        med = statistics.median(results[m])
        print(f"{m:8s} {med:18.1f} {med / base:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
