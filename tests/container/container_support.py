"""Helpers for the container tests (conftest.py holds the fixtures)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import local_mode  # noqa: E402,F401  (scripts/local_mode.py, re-exported for the tests)
from smctl.local.runner import free_port  # noqa: E402,F401  (re-exported for the tests)

IN_CI = os.environ.get("CI", "").lower() == "true"
# Debian's client (BuildKit built in) when present, as the Makefile does.
DOCKER = os.environ.get("DOCKER") or (
    "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker") or "docker")

# Small but real: 3 Fashion-MNIST classes at 32 px, 3 epochs of resnet18 from scratch (no
# ImageNet weights offline) with the demo's AdamW recipe: 0.67 test accuracy on the host, chance
# is 0.33 (the default SGD lr 0.01 with a warm-up epoch reached only 0.42 in 18 steps).
TRAIN_HP = ("epochs=3 weights=none arch=resnet18 image-size=32 batch-size=32 num-workers=1 "
            "optimizer=adamw lr=0.002")


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


# --- SageMaker SDK venvs -------------------------------------------------------------------
# The SDKs conflict with the pinned set (numpy, protobuf): each gets a throwaway venv
# (.venv-sdk2/, .venv-sdk3/, git-ignored, reused while the spec is unchanged). Installing v3
# takes minutes, so the `image` fixture starts both installs in the background during the build.
SDK_SPECS = {"2": "sagemaker>=2.250,<3", "3": "sagemaker>=3,<4"}
SDK_ENABLED = os.environ.get("IMGCLF_TEST_SDK", "1") != "0"
_sdk_jobs: dict[str, subprocess.Popen] = {}


def _sdk_paths(major: str) -> tuple[Path, Path, Path]:
    venv = REPO / f".venv-sdk{major}"
    return venv, venv / "bin" / "python", venv / ".installed"


def _sdk_ready(major: str) -> bool:
    _, py, stamp = _sdk_paths(major)
    return py.exists() and stamp.exists() and stamp.read_text() == SDK_SPECS[major]


def start_sdk_venvs() -> None:
    """Start creating the missing SDK venvs in the background (log: .venv-sdkN.log)."""
    for major, spec in SDK_SPECS.items():
        if _sdk_ready(major) or major in _sdk_jobs:
            continue
        venv, py, stamp = _sdk_paths(major)
        script = (f"set -e; '{sys.executable}' -m venv --clear '{venv}'; "
                  f"'{py}' -m pip install -q --disable-pip-version-check '{spec}'; "
                  f"printf %s '{spec}' > '{stamp}'")
        log = open(REPO / f".venv-sdk{major}.log", "w")
        _sdk_jobs[major] = subprocess.Popen(["bash", "-c", script], stdout=log,
                                            stderr=subprocess.STDOUT)


def sdk_python(major: str, timeout: float = 1500) -> Path:
    """The python of .venv-sdk<major>/, waiting for (or doing) its installation."""
    if not _sdk_ready(major):
        start_sdk_venvs()
        job = _sdk_jobs.get(major)
        if job is not None:
            job.wait(timeout=timeout)
        if not _sdk_ready(major):
            log = REPO / f".venv-sdk{major}.log"
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise AssertionError(f"installing {SDK_SPECS[major]} into .venv-sdk{major} failed:\n{tail}")
    return _sdk_paths(major)[1]

