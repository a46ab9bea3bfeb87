"""The image itself: SageMaker contract (labels, port, env, entry points), no build leftovers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from container_support import docker

pytestmark = pytest.mark.container


@pytest.fixture(scope="module")
def config(image) -> dict:
    return json.loads(docker("image", "inspect", image).stdout)[0]["Config"]


def sh(image: str, script: str, check=True, env: dict | None = None):
    args = ["run", "--rm"]
    for k, v in (env or {}).items():
        args += ["-e", f"{k}={v}"]
    return docker(*args, image, "bash", "-c", script, check=check, timeout=300)


def test_sagemaker_labels_port_and_env(config):
    labels = config["Labels"]
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    # multi-model endpoints are not supported, so the image must not claim it
    assert "com.amazonaws.sagemaker.capabilities.multi-models" not in labels
    assert "8080/tcp" in config["ExposedPorts"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["SAGEMAKER_PROGRAM"] == "train.py"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "/opt/ml/code" in env["PYTHONPATH"].split(":")
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"]
    # a CA bundle or pip settings from the build must not leak into the runtime env
    assert not {"PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "PIP_INDEX_URL"} & set(env)


def test_entry_points_and_runtime(image):
    out = sh(image, "set -e; command -v bash python3 train serve java; python3 --version; "
                    "ls /opt/ml/code/train.py; ls -d /opt/ml/input/config /opt/ml/input/data "
                    "/opt/ml/model /opt/ml/output/data; "
                    "python -c 'import torch, torchvision, sagemaker_training, sagemaker_inference, "
                    "smdebug, imgclf; print(\"torch\", torch.__version__, torch.version.cuda)'").stdout
    assert "/usr/local/bin/serve" in out and re.search(r"/train\n", out)
    assert "Python 3.11" in out
    assert "torch 2.10.0+cu128 12.8" in out


def test_no_compiler_in_runtime_image(image):
    p = sh(image, "for c in gcc cc c++ g++ clang x86_64-linux-gnu-gcc x86_64-linux-gnu-gcc-12 make ld; do "
                  "command -v $c && echo FOUND $c; done; "
                  "ls /usr/include/python3.11/Python.h 2>/dev/null && echo FOUND Python.h; "
                  "dpkg -l | awk '/^ii/ {print $2}' | grep -E '^(gcc|g\\+\\+|cpp)(-[0-9]+)?(:|$)|^libc6-dev|^libpython3.*-dev|^python3.*-dev' "
                  "| sed 's/^/FOUND pkg /'; true")
    assert "FOUND" not in p.stdout, p.stdout


def test_no_ca_secret_or_pip_config_in_image(image):
    """The build's CA bundle was a BuildKit secret: no file, layer history or env keeps it."""
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    # the runtime stage's history must not even mention the build stage's CA handling
    for needle in ("BEGIN CERTIFICATE", "pip_ca", "PIP_CERT", "REQUESTS_CA_BUNDLE"):
        assert needle not in history, needle
    p = sh(image, "ls /run/secrets /tmp/ca.pem /root/.cache/pip /etc/pip.conf /root/.config/pip "
                  "2>/dev/null; true")
    assert p.stdout.strip() == "", p.stdout
    # Certificates that the host bundle (the secret `make build` passes) has beyond Debian's
    # stock bundle are the proxy's CA: none of them may be anywhere in the image's config trees.
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if not host_bundle.exists():
        return
    image_bundle = sh(image, "cat /etc/ssl/certs/ca-certificates.crt").stdout
    extra = [c for c in re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END",
                                   host_bundle.read_text(), re.S)
             if c not in image_bundle]
    for cert in extra[:5]:
        line = cert.splitlines()[3]  # a 64-char base64 line from the middle of the cert
        p = sh(image, f"grep -rlF '{line}' /etc /tmp /root /run /var /usr/local /opt/ml "
                      f"$(find /opt/venv -name '*.pem' -o -name '*.crt') 2>/dev/null; true")
        assert p.stdout.strip() == "", f"proxy CA found in image: {p.stdout}"


@pytest.mark.parametrize("driver, compat, expect", [
    (None, False, "no NVIDIA driver visible: running on CPU"),
    ("550.54.15", False, "NVIDIA driver 550.54.15: CUDA 12.8 supported"),
    ("470.256.02", False, "WARNING: NVIDIA driver 470.256.02 < 525"),
    ("470.256.02", True, "using CUDA forward-compat libraries"),
])
def test_entrypoint_logs_driver_situation(image, driver, compat, expect):
    """The start-up check (container/entrypoint.sh), fed a fake /proc/driver/nvidia/version."""
    setup = "mkdir -p /tmp/fake; "
    if driver:
        setup += (f"echo 'NVRM version: NVIDIA UNIX x86_64 Kernel Module  {driver}  Release Build' "
                  "> /tmp/fake/version; ")
    if compat:
        setup += "mkdir -p /tmp/compat && touch /tmp/compat/libcuda.so.1; "
    p = docker("run", "--rm", "--entrypoint", "bash", image, "-c",
               setup + "NVIDIA_VERSION_FILE=/tmp/fake/version CUDA_COMPAT_DIR=/tmp/compat "
               "/usr/local/bin/imgclf-entrypoint bash -c 'echo LD=$LD_LIBRARY_PATH'", timeout=120)
    assert expect in p.stderr, p.stderr
    assert ("LD=/tmp/compat" in p.stdout) == compat


def test_entrypoint_without_command_is_usage_error(image):
    p = docker("run", "--rm", "--entrypoint", "/usr/local/bin/imgclf-entrypoint", image, check=False,
               timeout=120)
    assert p.returncode == 2 and "usage" in p.stderr


def test_tini_is_pid_1_and_reaps_orphans(image):
    """PID 1 is tini (the image's ENTRYPOINT), not the command: it forwards SIGTERM and collects
    orphaned grandchildren, so no zombie outlives its parent."""
    p = sh(image, "tr '\\0' ' ' < /proc/1/cmdline; echo; echo SELF=$$; "
                  "sh -c 'sleep 0.2 & exit 0'; sleep 1; "  # the sleep is orphaned, then exits
                  "ps -eo stat= | grep -c '^Z' || true")
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("/usr/bin/tini -- /usr/local/bin/imgclf-entrypoint"), lines
    assert lines[1] != "SELF=1"
    assert lines[-1] == "0", p.stdout  # no zombies
