#!/usr/bin/env python3
"""Build a small real dataset in the dogImages layout from Fashion-MNIST.

    python scripts/make_sample_data.py --out sample_data/fashion
    -> sample_data/fashion/{train,valid,test}/001.T-shirt_top/*.jpg ... 010.Ankle_boot/

Source: Debian's ``dataset-fashion-mnist`` package (/usr/share/datasets/fashion-mnist, MIT
licence: ``apt-get install dataset-fashion-mnist``) when present, else torchvision's download.
Images are real 28x28 grayscale product photos, saved as JPEG (scaled with --size), so training
exercises the same decode path as real photos (grayscale -> RGB included). Deterministic.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys

import numpy as np
from PIL import Image

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle_boot"]


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(source: str | None):
    """(train_images, train_labels, test_images, test_labels) as uint8 arrays."""
    src = source or DEBIAN_DIR
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    if all(os.path.isfile(os.path.join(src, n)) for n in names):
        return tuple(read_idx(os.path.join(src, n)) for n in names)
    if source:
        sys.exit(f"error: {source} lacks the Fashion-MNIST idx files ({', '.join(names)})")
    print(f"{DEBIAN_DIR} not found (apt-get install dataset-fashion-mnist); trying torchvision's "
          f"download", file=sys.stderr)
    try:
        from torchvision.datasets import FashionMNIST
        root = os.path.join(os.path.expanduser("~"), ".cache", "fashion-mnist")
        tr, te = (FashionMNIST(root, train=t, download=True) for t in (True, False))
    except Exception as e:  # no network, mirror down...
        sys.exit(f"error: no Fashion-MNIST source: install Debian's dataset-fashion-mnist or "
                 f"allow torchvision's download ({type(e).__name__}: {e})")
    return tr.data.numpy(), tr.targets.numpy(), te.data.numpy(), te.targets.numpy()


def write_split(out: str, split: str, images: np.ndarray, labels: np.ndarray, per_class: int,
                size: int, classes: list[int]) -> int:
    n = 0
    for c in classes:
        folder = os.path.join(out, split, f"{c + 1:03d}.{CLASSES[c]}")
        os.makedirs(folder, exist_ok=True)
        for i, idx in enumerate(np.flatnonzero(labels == c)[:per_class]):
            img = Image.fromarray(images[idx])
            if size != img.width:
                img = img.resize((size, size), Image.BICUBIC)
            img.save(os.path.join(folder, f"{CLASSES[c]}_{split}_{i:05d}.jpg"), quality=92)
            n += 1
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="sample_data/fashion", help="output folder")
    p.add_argument("--source", help="folder with the four Fashion-MNIST idx .gz files "
                                    f"(default: {DEBIAN_DIR}, else torchvision download)")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--valid-per-class", type=int, default=20)
    p.add_argument("--test-per-class", type=int, default=20)
    p.add_argument("--classes", type=int, default=10, help="how many of the 10 classes")
    p.add_argument("--size", type=int, default=28, help="image side in pixels")
    args = p.parse_args(argv)
    if not 2 <= args.classes <= 10:
        p.error("--classes must be in 2..10")
    marker = os.path.join(args.out, ".complete")
    wanted = repr(sorted(vars(args).items()))
    if os.path.isfile(marker) and open(marker).read() == wanted:
        print(f"{args.out}: already built")
        return 0
    tr_x, tr_y, te_x, te_y = load_fashion_mnist(args.source)
    classes = list(range(args.classes))
    # valid and test both come from the official test set, disjoint halves
    half = len(te_y) // 2
    counts = {
        "train": write_split(args.out, "train", tr_x, tr_y, args.train_per_class, args.size, classes),
        "valid": write_split(args.out, "valid", te_x[:half], te_y[:half], args.valid_per_class,
                             args.size, classes),
        "test": write_split(args.out, "test", te_x[half:], te_y[half:], args.test_per_class,
                            args.size, classes),
    }
    with open(marker, "w") as f:
        f.write(wanted)
    print(f"{args.out}: {args.classes} classes, " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
