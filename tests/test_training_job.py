"""The training job end to end: laptop CLI and the real sagemaker-training `train` entry."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image

from smctl.local.runner import free_port
from training_support import CODE_DIR, COLORS, FAST_ARGS, train_cli, write_color_images
from imgclf.artifact import load_artifact
from imgclf.metrics import parse_metrics
from imgclf.transforms import preprocess_batch

pytestmark = pytest.mark.slow


def test_laptop_run_learns_real_photos_and_keeps_the_best_epoch(fashion_data, tmp_path):
    r = train_cli(tmp_path, "--data-dir", str(fashion_data), "--epochs", "5", "--optimizer", "adamw",
                  "--lr", "0.002", *FAST_ARGS)
    assert r.returncode == 0, r.stdout[-3000:]
    found = parse_metrics(r.stdout)
    assert len(found["train_loss"]) == 5 and len(found["valid_acc"]) == 5
    assert found["average test loss"][0] < 1.2  # chance-level loss for 4 classes is ln 4 = 1.39
    assert found["test_acc"][0] > 0.5, r.stdout[-2000:]  # chance is 0.25

    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["arch"] == "resnet18" and meta["num_classes"] == 4
    assert meta["classes"][0] == "001.T-shirt_top" and meta["image_size"] == 32
    assert meta["mean"] == [0.485, 0.456, 0.406] and "torch" in meta["versions"]
    history = json.loads((tmp_path / "output" / "data" / "metrics.json").read_text())["epochs"]
    best = min(history, key=lambda h: h["valid_loss"])
    assert meta["metrics"]["best_epoch"] == best["epoch"]
    assert meta["metrics"]["test_acc"] == pytest.approx(found["test_acc"][0], abs=1e-4)
    assert (tmp_path / "output" / "data" / "metrics.csv").read_text().count("\n") == 6
    assert (tmp_path / "output" / "data" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"

    # the artifact alone reproduces the test accuracy through the serving preprocessing
    model, m = load_artifact(str(tmp_path / "model"))
    files, labels = [], []
    for i, c in enumerate(m.classes):
        for f in sorted((fashion_data / "test" / c).iterdir()):
            files.append(str(f))
            labels.append(i)
    with torch.no_grad():
        pred = model(preprocess_batch(files, m.image_size, m.resize_size, m.mean, m.std)).argmax(1)
    acc = (pred == torch.tensor(labels)).float().mean().item()
    assert acc == pytest.approx(meta["metrics"]["test_acc"], abs=1e-6)


def test_sagemaker_train_entry_with_separate_channels(sm_tree, color_data):
    for split in ("train", "valid", "test"):
        sm_tree.channel(split, color_data / split)
    sm_tree.write_config({"epochs": 2, "batch_size": 8, "weights": "none", "image_size": 32,
                          "num_workers": 1, "freeze_backbone": False, "lr_schedule": "step"})
    r = sm_tree.run()
    assert r.returncode == 0, r.stdout[-3000:]
    assert (sm_tree.base / "output" / "success").exists() and sm_tree.failure is None
    assert {"model.pt", "model.json"} <= set(os.listdir(sm_tree.base / "model"))
    found = parse_metrics(r.stdout)
    assert len(found["valid_loss"]) == 2 and len(found["average test loss"]) == 1
    assert (sm_tree.base / "output" / "data" / "metrics.csv").exists()
    assert (sm_tree.base / "checkpoints" / "checkpoint.pt").exists()
    hp = json.loads((sm_tree.base / "model" / "model.json").read_text())["hyperparameters"]
    assert hp["batch_size"] == 8 and hp["lr_schedule"] == "step"


def test_sagemaker_training_channel_holding_all_three(sm_tree, color_data):
    sm_tree.channel("training", color_data)
    sm_tree.write_config({"epochs": 1, "batch-size": 8, "weights": "none", "image-size": 32,
                          "num-workers": 0})
    r = sm_tree.run()
    assert r.returncode == 0, r.stdout[-3000:]
    assert json.loads((sm_tree.base / "model" / "model.json").read_text())["classes"] == sorted(COLORS)


@pytest.mark.parametrize("case,needle", [
    ("no_valid", "no validation data"),
    ("extra_class", "test has classes that train lacks: 009.Extra"),
    ("bad_lr", "lr must be > 0"),
    ("bad_arch", "unknown architecture 'resnet_nope'"),
    ("bad_pixel_limit", "IMGCLF_MAX_PIXELS='64M' is not an integer"),
])
def test_bad_input_writes_the_reason_to_the_failure_file(sm_tree, color_data, case, needle):
    sm_tree.channel("train", color_data / "train")
    if case != "no_valid":
        sm_tree.channel("valid", color_data / "valid")
    if case == "extra_class":
        write_color_images(color_data, {"009.Extra": (9, 9, 9)}, {"test": 1}, size=8)
        sm_tree.channel("test", color_data / "test")
    hp = {"epochs": 1, "weights": "none", "image-size": 32, "num-workers": 0}
    hp.update({"bad_lr": {"lr": -1}, "bad_arch": {"arch": "resnet_nope"}}.get(case, {}))
    sm_tree.write_config(hp)
    r = sm_tree.run(env={"IMGCLF_MAX_PIXELS": "64M"} if case == "bad_pixel_limit" else None)
    assert r.returncode != 0
    assert needle in (sm_tree.failure or ""), (sm_tree.failure, r.stdout[-2000:])
    assert "Traceback" not in sm_tree.failure
    assert not (sm_tree.base / "output" / "success").exists()


def test_truncated_images_are_skipped_with_a_count_unless_too_many(tmp_path, color_data):
    broken = color_data / "train" / "001.Red" / "Broken_06571.jpg"
    good = (color_data / "train" / "001.Red" / "001.Red_0.jpg").read_bytes()
    broken.write_bytes(good[: len(good) // 2])
    r = train_cli(tmp_path, "--data-dir", str(color_data), "--epochs", "1",
                  "--max-bad-fraction", "0.05", *FAST_ARGS)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "skipped 1 unreadable image(s) in train" in r.stdout and "Broken_06571.jpg" in r.stdout

    for i in range(4):
        (color_data / "train" / "002.Green" / f"bad{i}.jpg").write_bytes(b"\xff\xd8 nope")
    r = train_cli(tmp_path / "again", "--data-dir", str(color_data), "--epochs", "1",
                  "--max-bad-fraction", "0.05", *FAST_ARGS)
    assert r.returncode == 1
    failure = (tmp_path / "again" / "output" / "failure").read_text()
    bad, seen = map(int, re.search(r"(\d+) of (\d+) train images read cannot be decoded",
                                   failure).groups())
    assert bad >= 4 and bad / seen > 0.05 and "002.Green/bad" in failure


def test_killed_run_resumes_and_ends_exactly_like_the_uninterrupted_run(tmp_path, color_data):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}

    def cmd(run: str):
        return [sys.executable, str(CODE_DIR / "train.py"), "--data-dir", str(color_data),
                "--model-dir", str(tmp_path / run / "model"),
                "--output-data-dir", str(tmp_path / run / "out"),
                "--checkpoint-dir", str(tmp_path / run / "ck"), "--epochs", "3", "--seed", "3",
                *FAST_ARGS]
    first = subprocess.Popen(cmd("spot"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env)
    seen = []
    for line in first.stdout:  # kill -9, like a spot interruption, once epoch 2 is checkpointed
        seen.append(line)
        if "checkpoint saved: epoch 2" in line:
            first.send_signal(signal.SIGKILL)
            break
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, "".join(seen)[-2000:]
    assert not (tmp_path / "spot" / "model" / "model.json").exists()

    second = subprocess.run(cmd("spot"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "resuming from" in second.stdout and "at epoch 3" in second.stdout
    epochs_printed = [line.split()[1] for line in second.stdout.splitlines()
                      if line.startswith("epoch ")]
    assert epochs_printed == ["3/3"]
    history = json.loads((tmp_path / "spot" / "out" / "metrics.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3]

    full = subprocess.run(cmd("full"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env, timeout=600)
    assert full.returncode == 0, full.stdout[-3000:]
    resumed = torch.load(tmp_path / "spot" / "model" / "model.pt", weights_only=True)
    straight = torch.load(tmp_path / "full" / "model" / "model.pt", weights_only=True)
    assert resumed.keys() == straight.keys()
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    meta = [json.loads((tmp_path / r / "model" / "model.json").read_text())["metrics"]
            for r in ("spot", "full")]
    assert meta[0]["test_loss"] == meta[1]["test_loss"]
    assert meta[0]["best_epoch"] == meta[1]["best_epoch"] == meta[0]["weights_epoch"]
    assert parse_metrics(second.stdout)["average test loss"] == parse_metrics(full.stdout)["average test loss"]


def test_ddp_on_two_cpu_processes_with_gloo(tmp_path, color_data):
    r = train_cli(tmp_path, "--data-dir", str(color_data), "--epochs", "2",
                  "--processes-per-host", "2", "--master-port", str(free_port()), *FAST_ARGS)
    assert r.returncode == 0, r.stdout[-4000:]
    assert "1 host(s) x 2 process(es)" in r.stdout and "world=2" in r.stdout
    assert "joined process group: rank 0 of 2 (gloo)" in r.stdout
    found = parse_metrics(r.stdout)
    assert len(found["train_loss"]) == 2 and len(found["average test loss"]) == 1  # rank 0 only
    # every rank trained on half of the 36 images per epoch; the sums cover all of them
    assert "train=36 images" in r.stdout
    model, meta = load_artifact(str(tmp_path / "model"))
    assert meta.num_classes == 3


def test_ddp_error_on_one_rank_ends_both_with_its_reason_without_a_hang(tmp_path, color_data):
    # one unreadable image with batch size 1: the rank whose shard holds it fails (an empty
    # batch under DDP), while the other rank waits in the gradient all-reduce
    victim = color_data / "train" / "002.Green" / "002.Green_3.jpg"
    victim.write_bytes(b"\xff\xd8 not a jpeg")
    r = train_cli(tmp_path, "--data-dir", str(color_data), "--epochs", "2", "--processes-per-host",
                  "2", "--master-port", str(free_port()), "--max-bad-fraction", "1", *FAST_ARGS,
                  "--batch-size", "1", "--image-size", "64", timeout=300)  # 64 px: BN sees 2x2
    assert r.returncode != 0, r.stdout[-3000:]
    failure = (tmp_path / "output" / "failure").read_text()
    assert re.fullmatch(r"rank [01]: all 1 images of a train batch are unreadable \(e\.g\. .*"
                        r"002\.Green_3\.jpg: .*\); remove them from the dataset", failure), failure
    # every rank that reached its failure path reports that same first reason
    reasons = set(re.findall(r"training failed: (.*)", r.stdout))
    assert reasons == {failure}, (reasons, r.stdout[-4000:])


def test_a_failing_job_still_writes_both_reports_and_the_reason(tmp_path, color_data):
    for i in range(4):   # too many unreadable images: the job fails after epoch 1's train pass
        (color_data / "train" / "002.Green" / f"bad{i}.jpg").write_bytes(b"\xff\xd8 nope")
    r = train_cli(tmp_path, "--data-dir", str(color_data), "--epochs", "3",
                  "--max-bad-fraction", "0.05", "--profiler-interval", "0.2",
                  "--profiler-trace-steps", "50", *FAST_ARGS)  # a trace window the job never ends
    assert r.returncode == 1, r.stdout[-3000:]
    failure = (tmp_path / "output" / "failure").read_text()
    assert "train images read cannot be decoded" in failure
    data = tmp_path / "output" / "data"
    rules = json.loads((data / "rules_report.json").read_text())
    assert rules["training_failed"].startswith("TrainingError: ") and "cannot be decoded" in rules["training_failed"]
    assert rules["rules"]["LossNotDecreasing"]["evaluations"] + rules["rules"]["PoorWeightInitialization"]["evaluations"] >= 1
    summary = json.loads((data / "profiler_summary.json").read_text())
    assert summary["training_failed"] == rules["training_failed"]
    assert summary["train_step_count"] == 2   # 40 images / batch 16 (drop_last), before the failure
    html = (data / "profiler_report.html").read_text()
    assert "Training failed" in html and "Training rules" in html
    assert "training ended before the torch.profiler window" in r.stdout   # closed, not leaked
    assert not (tmp_path / "model" / "model.json").exists()
