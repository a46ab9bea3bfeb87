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
import sys
from pathlib import Path

import pytest

from container_support import REPO, local_mode, run

pytestmark = [pytest.mark.container,
              pytest.mark.skipif(os.environ.get("IMGCLF_TEST_SDK") == "0",
                                 reason="IMGCLF_TEST_SDK=0")]

HERE = Path(__file__).parent
SDK_SPECS = {"2": "sagemaker>=2.250,<3", "3": "sagemaker>=3,<4"}
TELEMETRY_OFF = """SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      TelemetryOptOut: true
"""


def sdk_python(major: str) -> Path:
    """Create (once) .venv-sdk<major>/ with the SDK; returns its python."""
    venv = REPO / f".venv-sdk{major}"
    stamp = venv / ".installed"
    py = venv / "bin" / "python"
    if not stamp.exists() or stamp.read_text() != SDK_SPECS[major]:
        run([sys.executable, "-m", "venv", "--clear", str(venv)])
        run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", SDK_SPECS[major]],
            timeout=1200)
        stamp.write_text(SDK_SPECS[major])
    return py


def sdk_env(tmp_path: Path) -> dict:
    config = tmp_path / "sagemaker-user-config.yaml"
    config.write_text(TELEMETRY_OFF)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="AKIAFAKEFAKEFAKEFAKE", AWS_SECRET_ACCESS_KEY="fake",
               AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true", SAGEMAKER_USER_CONFIG_OVERRIDE=str(config),
               SAGEMAKER_ADMIN_CONFIG_OVERRIDE=str(config))
    return env


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_sdk_v2_local_mode_fit_deploy_predict(image, sample_data, tmp_path):
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
    assert "telemetry" not in log.lower() or "opt" in log.lower()
    print(f"SDK v2 local mode: fit {summary['fit_s']}s, fit+deploy+predict {summary['total_s']}s")
