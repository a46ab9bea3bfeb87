"""The image driven by SageMaker's own client: SDK v2 local mode (fit, deploy, predict) and
SDK v3 ModelTrainer in local-container mode (training).

The SDKs conflict with the pinned set (numpy, protobuf), so each lives in its own throwaway venv
(.venv-sdk2/, .venv-sdk3/, git-ignored, reused between runs) driven through a subprocess.
No AWS is reachable: fake credentials, a region, and telemetry off in the SDK's user config.
SDK local serving publishes host port 8080, which must be free.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from container_support import REPO, SDK_ENABLED, docker, local_mode, sdk_python

pytestmark = [pytest.mark.container,
              pytest.mark.skipif(not SDK_ENABLED,
                                 reason="IMGCLF_TEST_SDK=0")]

HERE = Path(__file__).parent
TELEMETRY_OFF = """SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      TelemetryOptOut: true
"""


def sdk_env(tmp_path: Path) -> dict:
    config = tmp_path / "sagemaker-user-config.yaml"
    config.write_text(TELEMETRY_OFF)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="AKIAFAKEFAKEFAKEFAKE", AWS_SECRET_ACCESS_KEY="fake",
               AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true", SAGEMAKER_USER_CONFIG_OVERRIDE=str(config),
               # Any HTTP(S) call except to the local endpoint goes to a closed port, so the test
               # never reaches AWS, even on a laptop with real credentials and internet.
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9",
               NO_PROXY="localhost,127.0.0.1", no_proxy="localhost,127.0.0.1")
    return env


@pytest.fixture
def sdk_cleanup(image):
    """SDK local mode leaves its exited training containers and its network behind."""
    def exited() -> set[str]:
        return set(docker("ps", "-a", "-q", "--filter", f"ancestor={image}", "--filter",
                          "status=exited").stdout.split())
    before = exited()
    yield
    for cid in exited() - before:
        docker("rm", cid, check=False)
    docker("network", "rm", "sagemaker-local", check=False)  # fails harmlessly while in use


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_sdk_v2_local_mode_fit_deploy_predict(image, sample_data, tmp_path, sdk_cleanup):
    if not port_free(8080):
        pytest.fail("SDK local serving needs host port 8080, which is in use")
    py = sdk_python("2")
    img = local_mode.held_out_images(sample_data / "test", 1)[0]
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.run([str(py), str(HERE / "sdk_v2_local.py"), image, str(sample_data), str(out),
                        str(img)], capture_output=True, text=True, timeout=900,
                       env=sdk_env(tmp_path), cwd=tmp_path)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-6000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["model_data"].startswith("file://") and summary["model_data"].endswith("model.tar.gz")
    assert Path(summary["model_data"][len("file://"):]).stat().st_size > 1_000_000
    labels = json.loads((sample_data / "classes.json").read_text()) if (
        sample_data / "classes.json").exists() else sorted(d.name for d in (sample_data / "train").iterdir())
    assert summary["result"]["predictions"][0]["label"] in labels
    print(f"SDK v2 local mode: fit {summary['fit_s']}s, fit+deploy+predict {summary['total_s']}s")


def test_sdk_v3_model_trainer_local_container(image, sample_data, tmp_path, sdk_cleanup):
    """v3 replaces the entrypoint with its own bash driver running `python train.py ...` from
    the `code` channel: needs bash and python3 on PATH and the code importable there."""
    py = sdk_python("3")
    work = tmp_path / "v3"
    p = subprocess.run([str(py), str(HERE / "sdk_v3_local.py"), image, str(sample_data),
                        str(REPO / "code"), str(work)], capture_output=True, text=True,
                       timeout=900, env=sdk_env(tmp_path), cwd=tmp_path)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-6000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    files = summary["files"]
    assert any(f.endswith("model/model.pt") for f in files), files
    assert any(f.endswith("model/model.json") for f in files), files
    assert any(f.endswith("output/data/metrics.csv") for f in files), files
    assert "epoch 1/1" in log
    print(f"SDK v3 ModelTrainer local container: {summary['seconds']}s")
