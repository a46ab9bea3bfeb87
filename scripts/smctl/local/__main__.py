"""``python -m smctl.local train``: one SageMaker training job on this machine.

What ``make local-train`` and the demo run (single host; the two-host DDP run stays on
docker-compose, whose network resolves algo-1/algo-2)::

    PYTHONPATH=code:scripts python3 -m smctl.local train --data sample_data/fashion \\
        --job-dir local/train --runner container --image "$(make -s image-name)" --hp epochs=2

The tree is JOB_DIR/algo-1 (model/, output/, train.log); the job's log is also printed as it
grows. Exit: the job's own code, 2 for bad flags/hyperparameters/data (one line, before
anything starts), 130 on Ctrl-C/SIGTERM (the job is stopped first).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from smctl.errors import EXIT_INTERRUPTED, EXIT_USAGE, SmctlError
from smctl.local.runner import (Job, dataset_channels, default_image, make_runner,
                                sigterm_as_interrupt)
from smctl.util import parse_pairs


def follow(job: Job, out=None, interval: float = 0.5) -> int:
    """Copy the job's log to ``out`` as it grows, until the job ends; its exit code."""
    out = out or sys.stdout
    pos = 0
    while True:
        rc = job.poll()
        try:
            with open(job.tree.log_path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
        except OSError:
            chunk = b""
        if chunk:
            pos += len(chunk)
            out.write(chunk.decode(errors="replace"))
            out.flush()
        if rc is not None:
            return rc
        time.sleep(interval)


def train(args) -> int:
    from smctl import schema
    hps = schema.static_hyperparameters(parse_pairs(args.hp, "--hp"))
    try:
        channels = dataset_channels(Path(args.data))
        image = args.image or (default_image() if args.runner == "container" else None)
        runner = make_runner(args.runner, image)
    except ValueError as e:
        raise SmctlError(str(e), "", EXIT_USAGE) from None
    tree = runner.prepare(Path(args.job_dir) / "algo-1", hps, channels)
    with sigterm_as_interrupt():
        job = runner.launch(tree, args.name, gpu="all" if args.gpus else None)
        try:
            rc = follow(job)
        except KeyboardInterrupt:
            job.stop()
            print(f"smctl.local: interrupted; {args.name} stopped", file=sys.stderr)
            return EXIT_INTERRUPTED
    where = f"model in {tree.model_dir}, metrics in {tree.output_dir / 'data'}, log {tree.log_path}"
    if rc == 0:
        print(f"smctl.local: {args.name} completed: {where}")
    else:
        print(f"smctl.local: {args.name} failed (exit {rc}): {tree.failure or 'no failure file'}",
              file=sys.stderr)
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m smctl.local", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="one training job on the host or in the image")
    t.add_argument("--data", required=True, help="dataset folder with train/ valid/ test/")
    t.add_argument("--job-dir", default="local/train", help="the job's folder (default: %(default)s)")
    t.add_argument("--runner", choices=("host", "container"), default="container",
                   help="host: code/train.py under the sagemaker-training `train` entry; "
                        "container: docker run IMAGE train (default: %(default)s)")
    t.add_argument("--image", help="image for the container runner (default: make -s image-name)")
    t.add_argument("--name", default="local-train", help="TRAINING_JOB_NAME (default: %(default)s)")
    t.add_argument("--gpus", action="store_true", help="give the job every GPU (docker --gpus all)")
    t.add_argument("--hp", action="append", metavar="KEY=VALUE", help="hyperparameter (repeatable)")
    args = ap.parse_args(argv)
    try:
        return train(args)
    except SmctlError as e:
        print(f"smctl.local: error: {e.line()}", file=sys.stderr)
        return e.code


if __name__ == "__main__":
    sys.exit(main())
