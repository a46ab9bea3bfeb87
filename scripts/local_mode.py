#!/usr/bin/env python3
"""Local mode helpers for docker-compose.yml: the /opt/ml trees, waiting, invoking, evaluating.

Standard library only, so it runs with any python3 (no venv needed). The trees and the wait
are the local job runner's (``scripts/smctl/local/runner.py``). The Makefile calls it:

    python3 scripts/local_mode.py prepare --job-dir local/train --hosts 2 -H epochs=2 -H arch=resnet18
    python3 scripts/local_mode.py wait --url http://127.0.0.1:8080
    python3 scripts/local_mode.py invoke img.jpg               # prints the top-k
    python3 scripts/local_mode.py evaluate sample_data/fashion/test --limit 100

``prepare`` writes, for each host algo-1..algo-N, what SageMaker (and the SDK's local mode)
mounts into the training container::

    JOB_DIR/algo-N/input/config/{hyperparameters,inputdataconfig,resourceconfig}.json
    JOB_DIR/algo-N/input/data/<channel>/   (mount points; compose mounts DATA_DIR/<channel> there)
    JOB_DIR/algo-N/{model,output/data,checkpoints}/

Hyperparameter values are written as JSON strings, as SageMaker does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # smctl (standard library parts only)
from smctl.local.runner import JobTree, wait_for_ping  # noqa: E402

DEFAULT_URL = os.environ.get("SERVE_URL", "http://127.0.0.1:8080")
DEFAULT_CHANNELS = ("train", "valid", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


def host_names(n: int) -> list[str]:
    return [f"algo-{i}" for i in range(1, n + 1)]


def parse_hp(items: list[str]) -> dict[str, str]:
    hps = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--hp expects NAME=VALUE, got {item!r}")
        hps[key] = value
    return hps


def prepare(job_dir: Path, hosts: int, channels: list[str], hps: dict[str, str],
            instance_type: str = "local") -> list[Path]:
    """(Re)create JOB_DIR/algo-N trees (the local job runner's, for the compose hosts);
    earlier outputs of that job are removed."""
    names = host_names(hosts)
    if job_dir.exists():
        shutil.rmtree(job_dir)
    return [JobTree.prepare(job_dir / name, hps, {ch: Path(ch) for ch in channels}, hosts=names,
                            current_host=name, instance_type=instance_type).root
            for name in names]


def request(url: str, data: bytes | None = None, content_type: str | None = None,
            timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if content_type:
        req.add_header("Content-Type", content_type)
    req.add_header("Accept", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait(url: str, timeout: float) -> None:
    """Wait until /ping answers 200."""
    try:
        wait_for_ping(url, timeout, interval=1.0)
    except (TimeoutError, RuntimeError) as e:
        raise SystemExit(str(e)) from None


def top_predictions(body) -> list[tuple[str, float]]:
    """(label, probability) pairs, best first, from the server's JSON answer.

    Accepts {"predictions": [...]} (the first image's "topk" list when entries have one), a bare
    list, or one dict; each entry {"label"|"class", "probability"|"score"}.
    """
    if isinstance(body, dict) and "predictions" in body:
        body = body["predictions"]
    if isinstance(body, dict):
        body = [body]
    if body and isinstance(body[0], list):  # a batch of one
        body = body[0]
    if body and isinstance(body[0], dict) and "topk" in body[0]:  # one entry per image
        body = body[0]["topk"]
    out = []
    for p in body:
        label = p.get("label", p.get("class"))
        prob = p.get("probability", p.get("score", p.get("prob", float("nan"))))
        out.append((str(label), float(prob)))
    return out


def invoke(url: str, path: Path, retries_s: float = 30) -> list[tuple[str, float]]:
    """POST one image to /invocations; the first call may wait for the model to load."""
    data = path.read_bytes()
    ctype = CONTENT_TYPES.get(path.suffix.lower(), "application/x-image")
    deadline = time.monotonic() + retries_s
    while True:
        status, body = request(url + "/invocations", data, ctype)
        if status == 200:
            return top_predictions(json.loads(body))
        if time.monotonic() > deadline or 400 <= status < 500 and status != 404:
            raise SystemExit(f"{path}: HTTP {status}: {body[:500].decode(errors='replace')}")
        time.sleep(1)


def class_of(path: Path) -> str:
    """dogImages layout: .../NNN.Class_Name/img.jpg -> 'Class_Name'."""
    folder = path.parent.name
    return folder.split(".", 1)[1] if "." in folder else folder


def held_out_images(folder: Path, limit: int) -> list[Path]:
    """Up to `limit` images spread over all classes (round-robin), deterministic."""
    per_class = [sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                 for d in sorted(folder.iterdir()) if d.is_dir()]
    picked, i = [], 0
    while len(picked) < limit and any(i < len(c) for c in per_class):
        picked += [c[i] for c in per_class if i < len(c)]
        i += 1
    return picked[:limit]


def evaluate(url: str, folder: Path, limit: int, show: int) -> float:
    images = held_out_images(folder, limit)
    if not images:
        raise SystemExit(f"no images under {folder}/*/")
    correct = 0
    for n, img in enumerate(images):
        preds = invoke(url, img)
        truth, (label, prob) = class_of(img), preds[0]
        ok = label == truth or label.split(".", 1)[-1] == truth
        correct += ok
        if n < show:
            print(f"  {'ok ' if ok else 'BAD'} {img.parent.name}/{img.name}: {label} ({prob:.2f})")
    acc = correct / len(images)
    print(f"accuracy on {len(images)} held-out images: {acc:.3f} ({correct}/{len(images)})")
    return acc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write JOB_DIR/algo-N/input/config/*.json and folders")
    p.add_argument("--job-dir", type=Path, default=Path("local/train"),
                   help="folder for the job's host trees (default: %(default)s)")
    p.add_argument("--hosts", type=int, default=1, help="number of hosts (default: %(default)s)")
    p.add_argument("--channels", default=",".join(DEFAULT_CHANNELS),
                   help="comma-separated channel names (default: %(default)s)")
    p.add_argument("-H", "--hp", action="append", default=[], metavar="NAME=VALUE",
                   help="a hyperparameter (repeatable)")
    p = sub.add_parser("wait", help="wait for /ping")
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--timeout", type=float, default=120)
    p = sub.add_parser("invoke", help="POST images to /invocations and print the top-k")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--url", default=DEFAULT_URL)
    p = sub.add_parser("evaluate", help="accuracy of the endpoint on held-out DIR/NNN.Class/*.jpg")
    p.add_argument("folder", type=Path)
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--limit", type=int, default=100, help="images to send (default: %(default)s)")
    p.add_argument("--show", type=int, default=5, help="predictions to print (default: %(default)s)")
    p.add_argument("--min-accuracy", type=float, default=0.0,
                   help="exit 1 below this accuracy (default: %(default)s)")
    args = ap.parse_args(argv)

    if args.cmd == "prepare":
        for d in prepare(args.job_dir, args.hosts, [c for c in args.channels.split(",") if c],
                         parse_hp(args.hp)):
            print(d)
    elif args.cmd == "wait":
        wait(args.url, args.timeout)
    elif args.cmd == "invoke":
        for f in args.files:
            preds = invoke(args.url, f)
            print(f"{f}: " + ", ".join(f"{label} {prob:.3f}" for label, prob in preds))
    elif args.cmd == "evaluate":
        acc = evaluate(args.url, args.folder, args.limit, args.show)
        return 1 if acc < args.min_accuracy else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
