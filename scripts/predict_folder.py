#!/usr/bin/env python3
"""Predict a held-out image folder with a trained artifact and print accuracy + examples.

    python scripts/predict_folder.py --model-dir local/demo/model --data-dir sample_data/fashion/test

Uses the same artifact loader and preprocessing as the serving handler (imgclf.artifact,
imgclf.transforms), so the figure matches what the endpoint would answer.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "code"))

import torch  # noqa: E402

from imgclf.artifact import ArtifactError, load_artifact  # noqa: E402
from imgclf.data import display_name, list_images  # noqa: E402
from imgclf.transforms import preprocess_batch  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="folder with model.pt + model.json")
    p.add_argument("--data-dir", required=True, help="a split folder of NNN.Class/*.jpg")
    p.add_argument("--examples", type=int, default=5, help="predictions to print")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    try:
        model, meta = load_artifact(args.model_dir)
    except ArtifactError as e:
        sys.exit(f"error: {e}")
    found = list_images(args.data_dir)
    if not found:
        sys.exit(f"error: no class folders with images in {args.data_dir}")
    index = {c: i for i, c in enumerate(meta.classes)}
    items = [(path, index.get(c, -1)) for c in sorted(found) for path in found[c]]
    correct, shown = 0, 0
    step = max(1, len(items) // max(1, args.examples))
    for start in range(0, len(items), args.batch_size):
        chunk = items[start:start + args.batch_size]
        with torch.no_grad():
            probs = model(preprocess_batch([p for p, _ in chunk], meta.image_size,
                                           meta.resize_size, meta.mean, meta.std)).softmax(1)
        conf, pred = probs.max(1)
        for k, ((path, label), c, y) in enumerate(zip(chunk, conf.tolist(), pred.tolist())):
            correct += int(y == label)
            if (start + k) % step == 0 and shown < args.examples:
                shown += 1
                mark = "ok " if y == label else "BAD"
                print(f"  {mark} {os.path.basename(path):32s} -> {display_name(meta.classes[y]):14s} "
                      f"({c:.2f})  true: {display_name(meta.classes[label]) if label >= 0 else '?'}")
    print(f"held-out accuracy: {correct}/{len(items)} = {correct / len(items):.3f} "
          f"(chance {1 / meta.num_classes:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
