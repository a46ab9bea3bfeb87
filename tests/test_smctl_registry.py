"""``make build-push`` for real: push to a registry started on 127.0.0.1, then pull the tag back.

Needs a Docker engine and Debian's ``docker-registry`` package (``/usr/bin/docker-registry``).
Skipped with a reason when either is missing, except under CI=true, where it fails: CI must
provide both. The pushed image is a one-file image made with ``docker import`` (no pull, no
8 GB app image), so the test takes seconds.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from smctl.local.runner import free_port

REPO = Path(__file__).resolve().parents[1]
DOCKER = os.environ.get("DOCKER") or shutil.which("docker", path="/usr/bin") or shutil.which("docker")
REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"

pytestmark = pytest.mark.container


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the CI machine must provide it)")
    pytest.skip(reason)


def _docker_ok() -> bool:
    if not DOCKER:
        return False
    try:
        return subprocess.run([DOCKER, "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _docker(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture
def registry(tmp_path):
    if not _docker_ok():
        _unavailable("no Docker engine ('docker info' fails): start dockerd "
                     "(scripts/setup_docker.sh)")
    if not os.path.exists(REGISTRY_BIN):
        _unavailable("docker-registry is not installed: apt-get install docker-registry")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {tmp_path / 'registry-data'}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
""")
    log = open(tmp_path / "registry.log", "wb")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=log)
    host = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}/v2/", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("registry did not start: "
                            + (tmp_path / "registry.log").read_text()[-2000:])
            time.sleep(0.2)
        yield host
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def tiny_image(tmp_path):
    """A one-file image built with `docker import` (no base image, no network)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        payload = f"smctl registry test {time.time()}\n".encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    tag = f"smctl-test-tiny:{os.getpid()}-{int(time.time())}"
    res = subprocess.run([DOCKER, "import", "-", tag], input=buf.getvalue(), capture_output=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    yield tag
    _docker("rmi", "-f", tag)


def test_make_build_push_to_local_registry_and_pull_back(registry, tiny_image, tmp_path):
    image_id = _docker("image", "inspect", "--format", "{{.Id}}", tiny_image).stdout.strip()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "code"), str(REPO / "scripts")]),
           "SMCTL_STATE": str(tmp_path / "state.json")}
    res = subprocess.run(
        ["make", "-s", "build-push", f"IMAGE={tiny_image}", f"REGISTRY={registry}",
         "PUSH_LATEST=1", f"SMCTL={sys.executable} -m smctl", f"DOCKER={DOCKER}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    uri = res.stdout.strip().splitlines()[-1]
    repo, _, tag = uri.rpartition(":")
    assert repo == f"{registry}/imgclf-sagemaker"
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    assert tag == sha or tag.startswith(sha + "-dirty-")
    assert json.loads((tmp_path / "state.json").read_text())["image_uri"] == uri

    with urllib.request.urlopen(f"http://{registry}/v2/imgclf-sagemaker/tags/list", timeout=10) as r:
        assert sorted(json.load(r)["tags"]) == sorted([tag, "latest"])

    # drop every local name of the pushed image, then pull it back from the registry
    for name in (uri, f"{repo}:latest"):
        assert _docker("rmi", name).returncode == 0
    pulled = _docker("pull", uri)
    assert pulled.returncode == 0, pulled.stderr
    try:
        assert _docker("image", "inspect", "--format", "{{.Id}}", uri).stdout.strip() == image_id
    finally:
        _docker("rmi", "-f", uri)


def test_build_push_of_a_missing_image_fails_clearly(registry, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "code"), str(REPO / "scripts")]),
           "SMCTL_STATE": str(tmp_path / "state.json"), "DOCKER": DOCKER}
    res = subprocess.run([sys.executable, "-m", "smctl", "build-push", "--image",
                          "smctl-test-missing:nope", "--registry", registry],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("smctl: error: '") and "image inspect" in last
    assert "No such image: smctl-test-missing:nope" in last and "make build" in last
