#!/usr/bin/env python3
"""Training throughput, three ways, on the same data and model (images/s, higher is better):

1. pipeline  train.py's input pipeline + model: uint8 decode/crop in workers, pinned uint8
             batches, normalisation on the device, AMP + channels-last where the device has them
             (``imgclf.data.make_loaders`` + ``imgclf.engine.train_one_epoch``);
2. compute   the same model and step on uint8 batches already in memory: the compute limit;
3. naive     a loop as course solutions write it: ``ImageFolder`` + PIL transforms + ``ToTensor``
             + ``Normalize`` in the DataLoader, default loader settings, fp32.

    python scripts/bench_train.py --data-dir sample_data/fashion [--image-size 64] [--epochs 2]

Prints the three figures and the ratios (1)/(2) and (1)/(3).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "code"))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torchvision import datasets  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from imgclf.artifact import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from imgclf.callbacks import CallbackList, TrainContext  # noqa: E402
from imgclf.data import build_samples, make_loaders, resolve_splits  # noqa: E402
from imgclf.engine import train_one_epoch  # noqa: E402
from imgclf.models import build_model  # noqa: E402
from imgclf.training import resolve_amp  # noqa: E402
from imgclf.transforms import normalize  # noqa: E402


def setup(args, n_classes, device):
    torch.manual_seed(0)
    model = build_model(args.arch, n_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, opt, nn.CrossEntropyLoss()


def bench_pipeline(args, classes, samples, device) -> float:
    model, opt, crit = setup(args, len(classes), device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype, scaler = resolve_amp("auto", device)
    loaders = make_loaders(samples, args.image_size, args.batch_size, args.num_workers,
                           pin_memory=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ctx = TrainContext(model=model, optimizer=opt, criterion=crit, args=args, device=device,
                       output_dir="")
    kw = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, amp_dtype=amp_dtype, channels_last=channels_last)
    train_one_epoch(model, loaders["train"], crit, opt, sched, scaler, ctx, CallbackList(), **kw)
    images = seconds = 0.0
    for _ in range(args.epochs):
        r = train_one_epoch(model, loaders["train"], crit, opt, sched, scaler, ctx, CallbackList(), **kw)
        images, seconds = images + r["images"], seconds + r["time"]
    return images / seconds


def bench_compute(args, n_classes, n_images, device) -> float:
    model, opt, crit = setup(args, n_classes, device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype, _ = resolve_amp("auto", device)
    x = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size),
                      dtype=torch.uint8, device=device)
    y = torch.randint(0, n_classes, (args.batch_size,), device=device)
    steps = max(1, n_images // args.batch_size)

    def run(n):
        for _ in range(n):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = crit(model(normalize(x, IMAGENET_MEAN, IMAGENET_STD, channels_last)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
    run(2)
    start = time.perf_counter()
    run(steps * args.epochs)
    return steps * args.epochs * args.batch_size / (time.perf_counter() - start)


def bench_naive(args, train_dir, device) -> float:
    tf = T.Compose([T.RandomResizedCrop(args.image_size), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ds = datasets.ImageFolder(train_dir, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.num_workers)
    model, opt, crit = setup(args, len(ds.classes), device)
    model.train()

    def epoch():
        n = 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = crit(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            n += len(y)
        return n
    epoch()
    start, n = time.perf_counter(), 0
    for _ in range(args.epochs):
        n += epoch()
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default="sample_data/fashion")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--epochs", type=int, default=1, help="timed epochs after one warm-up epoch")
    args = p.parse_args(argv)
    if not os.path.isdir(os.path.join(args.data_dir, "train")):
        sys.exit(f"error: {args.data_dir}/train not found; run `make sample-data` first")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classes, samples = build_samples(resolve_splits(args.data_dir, None, None, None))
    n = len(samples["train"])
    print(f"device={device} arch={args.arch} image_size={args.image_size} "
          f"batch_size={args.batch_size} workers={args.num_workers} train_images={n} "
          f"torch_threads={torch.get_num_threads()}", flush=True)
    pipeline = bench_pipeline(args, classes, samples, device)
    print(f"(1) pipeline  {pipeline:9.1f} images/s   train.py input pipeline + model", flush=True)
    compute = bench_compute(args, len(classes), n, device)
    print(f"(2) compute   {compute:9.1f} images/s   same model on in-memory batches (limit)", flush=True)
    naive = bench_naive(args, os.path.join(args.data_dir, "train"), device)
    print(f"(3) naive     {naive:9.1f} images/s   ImageFolder + PIL transforms, default loader, fp32", flush=True)
    print(f"ratio (1)/(2) = {pipeline / compute:.2f}  (share of the compute limit reached)")
    print(f"ratio (1)/(3) = {pipeline / naive:.2f}  (speed-up over the naive loop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
