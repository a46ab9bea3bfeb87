"""Helpers for the container tests (conftest.py holds the fixtures)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import local_mode  # noqa: E402,F401  (scripts/local_mode.py, re-exported for the tests)

IN_CI = os.environ.get("CI", "").lower() == "true"
# Debian's client (BuildKit built in) when present, as the Makefile does.
DOCKER = os.environ.get("DOCKER") or (
    "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker") or "docker")

# Small but real: 3 Fashion-MNIST classes at 32 px, 3 epochs of resnet18 from scratch (no
# ImageNet weights offline): about 0.6 test accuracy, chance is 0.33.
TRAIN_HP = "epochs=3 weights=none arch=resnet18 image-size=32 batch-size=32 num-workers=1"


def run(cmd, check=True, timeout=900, **kw) -> subprocess.CompletedProcess:
    """Run a command, output captured as text; on failure show its tail."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        out = (p.stdout + p.stderr)[-6000:]
        raise AssertionError(f"{cmd if isinstance(cmd, str) else ' '.join(map(str, cmd))} "
                             f"exited {p.returncode}:\n{out}")
    return p


def docker(*args, **kw) -> subprocess.CompletedProcess:
    return run([DOCKER, *args], **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_env(image: str, **extra) -> dict:
    env = dict(os.environ, IMGCLF_IMAGE=image, DOCKER=DOCKER, PYTHON=sys.executable,
               COMPOSE_PROJECT_NAME=f"imgclftest{os.getpid()}")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def local_sh(cmd: str, env: dict, check=True, timeout=900) -> subprocess.CompletedProcess:
    return run(["bash", str(REPO / "scripts" / "local.sh"), cmd], env=env, check=check,
               timeout=timeout, cwd=REPO)


def compose_cmd() -> list[str]:
    if subprocess.run([DOCKER, "compose", "version"], capture_output=True).returncode == 0:
        return [DOCKER, "compose"]
    return ["docker-compose"]
