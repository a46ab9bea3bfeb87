"""Command-line configuration of train.py.

Every option has a default that works on a laptop; SageMaker's ``SM_*`` variables, when set,
replace the path defaults. SageMaker passes hyperparameters verbatim as ``--name value``, so each
multi-word option accepts both spellings (``--batch-size`` and ``--batch_size``) and booleans
accept ``True``/``False`` strings (JSON true arrives as ``True``).

The seed project's tuning space: ``lr`` continuous 0.001-0.01, ``batch_size`` in 128/256/512
(see :data:`SEED_SEARCH_SPACE`; the SageMaker CLI uses it as its default ranges).
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from imgclf import diagnostics
from imgclf.failure import TrainingError
from imgclf.options import option, str2bool, tristate

log = logging.getLogger(__name__)

# the smallest share of the image a random training crop keeps: torchvision's RandomResizedCrop
# default (the ImageNet recipe); also what a checkpoint from before the flag existed trained with
DEFAULT_CROP_SCALE = 0.08

SEED_SEARCH_SPACE = {
    "lr": {"type": "continuous", "min": 0.001, "max": 0.01, "scaling": "Logarithmic"},
    "batch-size": {"type": "categorical", "values": [128, 256, 512]},
}


def _env(*names: str, default=None):
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return default


def _default_checkpoint_dir() -> str:
    if os.environ.get("SM_CHECKPOINT_DIR"):
        return os.environ["SM_CHECKPOINT_DIR"]
    if os.environ.get("SAGEMAKER_BASE_DIR"):  # a relocated /opt/ml (tests, local trees)
        return os.path.join(os.environ["SAGEMAKER_BASE_DIR"], "checkpoints")
    if os.environ.get("SM_MODEL_DIR", "").startswith("/opt/ml/"):
        # CheckpointConfig.LocalPath's default, one sub-folder per job: the trials of a tuning job
        # share one S3 prefix, and a spot restart keeps its job name, so it finds its own files.
        return os.path.join("/opt/ml/checkpoints", os.environ.get("TRAINING_JOB_NAME", ""))
    return "checkpoints"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Fine-tune a torchvision classifier on an image-folder dataset "
                    "(train/valid/test folders of NNN.Class_Name/*.jpg).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    g = p.add_argument_group("data and paths (SageMaker sets these through SM_* variables)")
    option(g, "data-dir", default=_env("SM_CHANNEL_TRAINING"),
           help="one folder holding train/, valid/ (or validation/, val/) and test/ "
                "[SM_CHANNEL_TRAINING]")
    option(g, "train-dir", default=_env("SM_CHANNEL_TRAIN"), help="train split [SM_CHANNEL_TRAIN]")
    option(g, "valid-dir", default=_env("SM_CHANNEL_VALID", "SM_CHANNEL_VALIDATION"),
           help="validation split [SM_CHANNEL_VALID or SM_CHANNEL_VALIDATION]")
    option(g, "test-dir", default=_env("SM_CHANNEL_TEST"), help="test split [SM_CHANNEL_TEST]")
    option(g, "model-dir", default=_env("SM_MODEL_DIR", default="model"),
           help="where the artifact (model.pt + model.json) goes [SM_MODEL_DIR]")
    option(g, "output-data-dir", default=_env("SM_OUTPUT_DATA_DIR", default="output/data"),
           help="metrics, plots and reports [SM_OUTPUT_DATA_DIR]")
    option(g, "output-dir", default=_env("SM_OUTPUT_DIR"),
           help="where the 'failure' file goes on error [SM_OUTPUT_DIR]")
    option(g, "checkpoint-dir", default=_default_checkpoint_dir(),
           help="per-epoch checkpoints; a restarted job resumes from here (SageMaker syncs "
                "/opt/ml/checkpoints to S3 for spot training)")
    option(g, "max-bad-fraction", type=float, default=0.01,
           help="fail when more than this fraction of a split's images cannot be decoded "
                "(fewer are skipped with a count in the log)")

    g = p.add_argument_group("model")
    option(g, "arch", default="resnet18", help="any torchvision classification model name")
    option(g, "weights", default="auto",
           help="imagenet | none | PATH to a state_dict; 'auto' uses the 'pretrained' channel "
                "when given [SM_CHANNEL_PRETRAINED], else imagenet")
    option(g, "freeze-backbone", type=str2bool, default=False,
           help="train only the new classifier head")

    g = p.add_argument_group("optimisation")
    option(g, "epochs", type=int, default=10, help="number of epochs")
    option(g, "batch-size", type=int, default=128,
           help="images per step per process (seed tuning range 128/256/512)")
    option(g, "lr", type=float, default=0.01, help="peak learning rate (seed tuning range 0.001-0.01)")
    option(g, "optimizer", choices=["sgd", "adamw"], default="sgd", help="optimizer")
    option(g, "momentum", type=float, default=0.9, help="SGD momentum")
    option(g, "weight-decay", type=float, default=1e-4, help="weight decay")
    option(g, "label-smoothing", type=float, default=0.0, help="label smoothing in [0, 1)")
    option(g, "lr-schedule", choices=["cosine", "step", "constant"], default="cosine",
           help="cosine (with linear warmup) or step decay, applied per step")
    option(g, "warmup-epochs", type=float, default=1.0, help="linear warmup length (cosine)")
    option(g, "step-size", type=int, default=5, help="epochs between decays (step schedule)")
    option(g, "gamma", type=float, default=0.1, help="decay factor (step schedule)")
    option(g, "patience", type=int, default=0,
           help="early stopping: epochs without a better valid loss before stopping; 0 = off")

    g = p.add_argument_group("input pipeline and speed")
    option(g, "image-size", type=int, default=224, help="crop size fed to the network")
    option(g, "resize-size", type=int, default=0,
           help="evaluation and serving: resize the short side to this, then centre-crop "
                "image-size (0 = image-size x 256/224, the ImageNet ratio; = image-size: no crop)")
    option(g, "crop-scale", type=float, default=DEFAULT_CROP_SCALE,
           help="augmentation: smallest share of the image area a random training crop keeps "
                "(RandomResizedCrop scale=(crop-scale, 1); 0.08 = the ImageNet recipe, 1 = "
                "position and aspect jitter only)")
    option(g, "num-workers", type=int, default=min(8, os.cpu_count() or 1),
           help="DataLoader worker processes (0 = load in the main process)")
    option(g, "amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
           help="mixed precision; auto = bf16 on GPUs that support it, else fp16; off on CPU")
    option(g, "channels-last", type=tristate, default="auto",
           help="NHWC memory format (auto = on CUDA)")
    option(g, "seed", type=int, default=42, help="random seed")
    option(g, "processes-per-host", type=int, default=0,
           help="training processes per host (DDP); 0 = one per GPU, or 1 on CPU")
    option(g, "master-port", type=int, default=29500, help="torch.distributed rendezvous port")
    option(g, "progress", type=tristate, default="auto",
           help="progress bar (auto = when attached to a terminal)")

    diagnostics.add_arguments(p)
    return p


def validate(args: argparse.Namespace) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise TrainingError(f"bad hyperparameter: {msg}")
    need(args.epochs >= 1, f"epochs must be >= 1, got {args.epochs}")
    need(args.batch_size >= 1, f"batch-size must be >= 1, got {args.batch_size}")
    need(args.lr > 0, f"lr must be > 0, got {args.lr}")
    need(0 <= args.momentum < 1, f"momentum must be in [0, 1), got {args.momentum}")
    need(args.weight_decay >= 0, f"weight-decay must be >= 0, got {args.weight_decay}")
    need(0 <= args.label_smoothing < 1, f"label-smoothing must be in [0, 1), got {args.label_smoothing}")
    need(args.warmup_epochs >= 0, f"warmup-epochs must be >= 0, got {args.warmup_epochs}")
    need(args.step_size >= 1, f"step-size must be >= 1, got {args.step_size}")
    need(0 < args.gamma <= 1, f"gamma must be in (0, 1], got {args.gamma}")
    need(args.patience >= 0, f"patience must be >= 0, got {args.patience}")
    need(args.resize_size == 0 or args.resize_size >= args.image_size,
         f"resize-size must be 0 (auto) or >= image-size {args.image_size}, got {args.resize_size}")
    need(0 < args.crop_scale <= 1, f"crop-scale must be in (0, 1], got {args.crop_scale}")
    need(16 <= args.image_size <= 1024, f"image-size must be in 16..1024, got {args.image_size}")
    need(args.num_workers >= 0, f"num-workers must be >= 0, got {args.num_workers}")
    need(args.processes_per_host >= 0, f"processes-per-host must be >= 0, got {args.processes_per_host}")
    need(0 <= args.max_bad_fraction <= 1, f"max-bad-fraction must be in [0, 1], got {args.max_bad_fraction}")


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and validate; bad values raise TrainingError (-> failure file), not SystemExit."""
    parser = build_parser()

    def error(message):  # argparse would print usage and sys.exit(2) without a failure file
        raise TrainingError(f"bad hyperparameter: {message} (see train.py --help)")
    parser.error = error
    args, unknown = parser.parse_known_args(argv)
    # SageMaker tuning adds its own hyperparameters (e.g. _tuning_objective_metric).
    extra = [u for u in unknown if u.startswith("--") and not u.lstrip("-").startswith("_")]
    if extra:
        error(f"unknown option(s) {', '.join(extra)}")
    validate(args)
    return args


def args_to_dict(args: argparse.Namespace) -> dict:
    return json.loads(json.dumps(vars(args), default=str))
