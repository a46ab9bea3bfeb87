"""Helpers for the training tests: small real datasets and a SageMaker-style /opt/ml tree.

Imported by name (``from training_support import ...``); the fixtures that wrap them live in
``conftest.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CODE_DIR = REPO / "code"
VENV_BIN = Path(sys.executable).parent



def write_color_images(root: Path, classes: dict[str, tuple[int, int, int]], per_split: dict[str, int],
                       size: int = 40, seed: int = 0, ext: str = ".jpg") -> Path:
    """A trivially learnable image-folder set: each class a noisy solid colour."""
    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for i, (name, rgb) in enumerate(classes.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                a = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255)
                Image.fromarray(a.astype("uint8")).save(folder / f"{name}_{k}{ext}")
    return root


COLORS = {"001.Red": (220, 30, 30), "002.Green": (30, 200, 40), "003.Blue": (30, 40, 220)}


FAST_ARGS = ["--weights", "none", "--image-size", "32", "--batch-size", "16", "--num-workers", "0"]


def train_cli(tmp: Path, *args: str, timeout: float = 600, env: dict | None = None):
    """`python code/train.py` as on a laptop; returns CompletedProcess (stdout+stderr merged)."""
    cmd = [sys.executable, str(CODE_DIR / "train.py"),
           "--model-dir", str(tmp / "model"), "--output-data-dir", str(tmp / "output" / "data"),
           "--output-dir", str(tmp / "output"), "--checkpoint-dir", str(tmp / "checkpoints"), *args]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, env={**clean, **(env or {})})


class SageMakerTree:
    """A temp /opt/ml (SAGEMAKER_BASE_DIR) with config JSONs and channels, run by `train`."""

    def __init__(self, base: Path):
        self.base = base
        for d in ("input/config", "input/data", "model", "output/data", "code"):
            (base / d).mkdir(parents=True, exist_ok=True)

    def channel(self, name: str, source: Path) -> Path:
        dest = self.base / "input" / "data" / name
        if dest.exists() or dest.is_symlink():
            dest.unlink() if dest.is_symlink() else None
        dest.symlink_to(source, target_is_directory=True)
        return dest

    def write_config(self, hyperparameters: dict, hosts=("localhost",), current="localhost"):
        channels = sorted(p.name for p in (self.base / "input" / "data").iterdir())
        hp = {"sagemaker_program": "train.py", "sagemaker_submit_directory": str(CODE_DIR),
              **hyperparameters}
        cfg = self.base / "input" / "config"
        (cfg / "hyperparameters.json").write_text(json.dumps({k: json.dumps(v) if not isinstance(v, str) else v for k, v in hp.items()}))
        (cfg / "inputdataconfig.json").write_text(json.dumps(
            {c: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                 "RecordWrapperType": "None"} for c in channels}))
        (cfg / "resourceconfig.json").write_text(json.dumps(
            {"current_host": current, "hosts": list(hosts), "network_interface_name": "lo"}))

    def run(self, timeout: float = 600, env: dict | None = None):
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
        full = {**clean, "SAGEMAKER_BASE_DIR": str(self.base), "SAGEMAKER_PROGRAM": "train.py",
                "SM_CHECKPOINT_DIR": str(self.base / "checkpoints"), **(env or {})}
        return subprocess.run([str(VENV_BIN / "train")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout, env=full,
                              cwd=str(self.base))

    @property
    def failure(self) -> str | None:
        p = self.base / "output" / "failure"
        return p.read_text() if p.exists() else None
