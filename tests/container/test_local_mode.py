"""docker-compose local mode (docker-compose.yml + scripts/local.sh): train, two hosts, failure."""

from __future__ import annotations

import json

import pytest

from container_support import TRAIN_HP, local_env, local_sh

pytestmark = pytest.mark.container


def test_train_writes_model_metrics_and_success(trained):
    p, host = trained["proc"], trained["host"]
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert "Reporting training SUCCESS" in p.stdout + p.stderr
    assert (host / "output" / "success").exists()
    assert not (host / "output" / "failure").exists()
    meta = json.loads((host / "model" / "model.json").read_text())
    assert meta["arch"] == "resnet18" and meta["num_classes"] == 3
    assert meta["classes"] == ["001.T-shirt_top", "002.Trouser", "003.Pullover"]
    assert meta["image_size"] == 32
    assert (host / "model" / "model.pt").stat().st_size > 1_000_000
    data = host / "output" / "data"
    for name in ("metrics.csv", "metrics.json", "learning_curves.png"):
        assert (data / name).stat().st_size > 0, name
    assert len((data / "metrics.csv").read_text().strip().splitlines()) == 1 + 3  # header + epochs
    # hyperparameters arrived through input/config/hyperparameters.json as SageMaker passes them
    assert "--epochs 3" in p.stdout + p.stderr
    print(f"compose training took {trained['seconds']:.0f}s")


def test_bad_training_input_writes_failure(image, sample_data, tmp_path):
    """A train channel without any image: non-zero exit and /opt/ml/output/failure with a reason."""
    data = tmp_path / "bad"
    for split in ("train", "valid", "test"):
        (data / split / "001.Nothing").mkdir(parents=True)
        (data / split / "001.Nothing" / "notes.txt").write_text("not an image")
    job = tmp_path / "job"
    env = local_env(image, DATA_DIR=data, JOB_DIR=job, HP=TRAIN_HP)
    try:
        p = local_sh("train", env, check=False)
    finally:
        local_sh("down", env, check=False)
    assert p.returncode != 0
    failure = job / "algo-1" / "output" / "failure"
    assert failure.exists(), (p.stdout + p.stderr)[-3000:]
    reason = failure.read_text().strip()
    assert reason and len(reason) < 2000, reason
    assert not (job / "algo-1" / "output" / "success").exists()
    assert not (job / "algo-1" / "model" / "model.pt").exists()


def test_two_host_ddp_run_finishes(image, sample_data, tmp_path):
    """algo-1 + algo-2 on the compose network: torchrun rendezvous on algo-1, gloo on CPU."""
    job = tmp_path / "job2"
    env = local_env(image, DATA_DIR=sample_data, JOB_DIR=job, HOSTS=2,
                    HP="epochs=1 weights=none arch=resnet18 image-size=32 batch-size=16 num-workers=0")
    try:
        p = local_sh("train", env, check=False, timeout=900)
    finally:
        local_sh("down", env, check=False)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-5000:]
    assert "algo-1 exited with 0" in out and "algo-2 exited with 0" in out
    assert "world=2" in out or "rank 1 of 2" in out, out[-3000:]
    assert (job / "algo-1" / "model" / "model.pt").exists()
    assert (job / "algo-1" / "output" / "success").exists()
    assert (job / "algo-2" / "output" / "success").exists()


def test_tune_local_container_runner_then_serve_the_winner(image, tmp_path):
    """`smctl tune --local --runner container`: each trial `docker run IMAGE train` on its own
    tree; then the runner's ServeContainer (what a local batch transform uses) serves the
    winner with extra env on a loopback port and is gone after its block."""
    import csv
    import os
    import subprocess
    import sys
    import urllib.request

    from container_support import DOCKER, REPO, docker
    from smctl.local.runner import ServeContainer
    from training_support import COLORS, write_color_images

    data = write_color_images(tmp_path / "data", COLORS, {"train": 4, "valid": 2, "test": 2},
                              size=16)
    out = tmp_path / "study"
    env = dict(os.environ, DOCKER=DOCKER,
               PYTHONPATH=os.pathsep.join([str(REPO / "code"), str(REPO / "scripts")]))
    p = subprocess.run([sys.executable, "-m", "smctl", "tune", "--local", "--runner", "container",
                        "--image", image, "--data", str(data), "--output", str(out),
                        "--name", f"ctune{os.getpid()}", "--max-jobs", "2",
                        "--max-parallel-jobs", "2", "--early-stopping", "Off",
                        "--hp", "epochs=1", "--hp", "weights=none", "--hp", "image-size=16",
                        "--hp", "rules=false", "--hp", "profiler=false"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    with open(out / "trials.csv", newline="") as f:
        trials = list(csv.DictReader(f))
    assert [t["state"] for t in trials] == ["Completed", "Completed"]
    for t in trials:
        log = (out / t["trial"] / "train.log").read_text()
        assert "imgclf-entrypoint" in log  # it ran in the image, not on the host
        assert (out / t["trial"] / "output" / "success").exists()
    left = docker("ps", "-a", "-q", "--filter", f"name=ctune{os.getpid()}").stdout.strip()
    assert left == "", "a trial container was left behind"

    best = json.loads((out / "best.json").read_text())["trial"]
    with ServeContainer(image, out / best / "model", {"SAGEMAKER_BATCH": "true"}) as server:
        server.wait_ready(timeout=240)
        name = server.name
        inspect = docker("inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", name).stdout
        assert "SAGEMAKER_BATCH=true" in inspect
        img = next((data / "test" / "001.Red").iterdir()).read_bytes()
        req = urllib.request.Request(server.url + "/invocations", data=img,
                                     headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(req, timeout=60) as r:
            preds = json.loads(r.read())["predictions"]
        assert preds[0]["label"] in COLORS
    gone = subprocess.run([DOCKER, "inspect", name], capture_output=True)
    assert gone.returncode != 0, "the serving container was not removed"
