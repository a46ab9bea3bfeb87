#!/usr/bin/env python3
"""Local mode helpers for docker-compose.yml: the /opt/ml trees and waiting for the server.

Standard library only, so it runs with any python3 (no venv needed). The trees and the wait
are the local job runner's (``scripts/smctl/local/runner.py``). The Makefile calls it:

    python3 scripts/local_mode.py prepare --job-dir local/train --hosts 2 -H epochs=2 -H arch=resnet18
    python3 scripts/local_mode.py wait --url http://127.0.0.1:8080

Invoking and evaluating go through smctl's one ``/invocations`` client: ``smctl invoke FILE
--url URL`` (``make local-invoke``) and ``smctl evaluate --data DIR --url URL`` (the demo).

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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "code"))  # imgclf.layout: same
from imgclf.layout import is_image_file  # noqa: E402
from smctl.local.runner import JobTree, wait_for_ping  # noqa: E402

DEFAULT_URL = os.environ.get("SERVE_URL", "http://127.0.0.1:8080")
DEFAULT_CHANNELS = ("train", "valid", "test")


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


def held_out_images(folder: Path, limit: int) -> list[Path]:
    """Up to `limit` images spread over all classes (round-robin), deterministic."""
    per_class = [sorted(p for p in d.iterdir() if is_image_file(p.name))
                 for d in sorted(folder.iterdir()) if d.is_dir()]
    picked, i = [], 0
    while len(picked) < limit and any(i < len(c) for c in per_class):
        picked += [c[i] for c in per_class if i < len(c)]
        i += 1
    return picked[:limit]


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
    args = ap.parse_args(argv)

    if args.cmd == "prepare":
        for d in prepare(args.job_dir, args.hosts, [c for c in args.channels.split(",") if c],
                         parse_hp(args.hp)):
            print(d)
    elif args.cmd == "wait":
        wait(args.url, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
