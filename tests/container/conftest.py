"""Container tests: build the image ONCE per session and drive it like SageMaker does.

Every test module here sets ``pytestmark = pytest.mark.container``. Without a usable Docker they skip with the
reason, except under CI (``CI=true``), where a missing Docker is a failure: CI must have
exercised the image.

Env knobs:
  IMGCLF_TEST_IMAGE=name:tag   use this already-built image instead of `make build`
  IMGCLF_TEST_SDK=0            skip the SageMaker SDK tests (they create .venv-sdk*/ first)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from container_support import (DOCKER, IN_CI, REPO, SDK_ENABLED, TRAIN_HP, compose_cmd, docker,
                               free_port, local_env, local_sh, run, start_sdk_venvs)


@pytest.fixture(scope="session")
def docker_ok() -> str:
    why = None
    if not shutil.which(DOCKER):
        why = "no docker client on PATH"
    else:
        p = subprocess.run([DOCKER, "info"], capture_output=True, text=True)
        if p.returncode != 0:
            why = f"`docker info` failed: {p.stderr.strip()[:300]}"
    if why:
        msg = (f"container tests need Docker ({why}); on Debian run `bash scripts/setup_docker.sh`")
        if IN_CI:
            pytest.fail("CI=true: " + msg, pytrace=False)
        pytest.skip(msg)
    return DOCKER


@pytest.fixture(scope="session")
def image(docker_ok) -> str:
    """The image under test, built once per session with `make build` (layer cache makes a
    rebuild with unchanged inputs take seconds)."""
    name = os.environ.get("IMGCLF_TEST_IMAGE")
    if name:
        docker("image", "inspect", name)
        if SDK_ENABLED:
            start_sdk_venvs()
        return name
    if SDK_ENABLED:
        start_sdk_venvs()  # in parallel with the build; test_sdk.py waits for them
    name = run(["make", "-s", "image-name"], cwd=REPO).stdout.strip()
    t0 = time.monotonic()
    run(["make", "build", f"IMAGE={name}"], cwd=REPO, timeout=3600)
    print(f"\nbuilt {name} in {time.monotonic() - t0:.0f}s")
    return name


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """The project's sample set (scripts/make_sample_data.py), 3 classes, small."""
    out = tmp_path_factory.mktemp("fashion")
    run([sys.executable, str(REPO / "scripts" / "make_sample_data.py"), "--out", str(out),
         "--classes", "3", "--train-per-class", "60", "--valid-per-class", "10",
         "--test-per-class", "15"])
    return out


@pytest.fixture(scope="session")
def trained(image, sample_data, tmp_path_factory) -> dict:
    """One single-host training run through docker-compose (`make local-train`'s path)."""
    job = tmp_path_factory.mktemp("job")
    env = local_env(image, DATA_DIR=sample_data, JOB_DIR=job, HOSTS=1, HP=TRAIN_HP)
    t0 = time.monotonic()
    p = local_sh("train", env, check=False)
    yield {"proc": p, "job": job, "host": job / "algo-1", "model": job / "algo-1" / "model",
           "seconds": time.monotonic() - t0, "env": env}
    local_sh("down", env, check=False)  # the compose network `run` leaves behind


@pytest.fixture(scope="session")
def endpoint(trained, image, tmp_path_factory):
    """`serve` from docker-compose with the trained model mounted read-only."""
    assert trained["proc"].returncode == 0, trained["proc"].stdout[-3000:] + trained["proc"].stderr[-3000:]
    port = free_port()
    env = dict(trained["env"], SERVE_PORT=str(port), MODEL_DIR=str(trained["model"]))
    try:
        local_sh("serve", env, timeout=300)
        yield f"http://127.0.0.1:{port}"
    finally:
        logs = run([*compose_cmd(), "-f", str(REPO / "docker-compose.yml"), "logs", "--no-color",
                    "serve"], env=env, check=False, cwd=REPO)
        (tmp_path_factory.getbasetemp() / "serve.log").write_text(logs.stdout + logs.stderr)
        local_sh("down", env, check=False)
