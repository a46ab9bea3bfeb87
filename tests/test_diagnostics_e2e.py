"""Diagnostics through the real training entry point (imgclf.training.main) and its flags."""

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from imgclf import diagnostics
from imgclf.diagnostics import profiler as P, rules as R


def _dataset(root, classes=2, per_class=6, size=40):
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        for c in range(classes):
            d = root / split / f"{c + 1:03d}.Class_{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                img = (rng.random((size, size, 3)) * 80 + c * 120).astype("uint8")
                Image.fromarray(img).save(d / f"img_{i}.jpg")
    return root


def _parse(argv):
    p = argparse.ArgumentParser()
    diagnostics.add_arguments(p)
    return p.parse_args(argv)


def test_flags_accept_sagemaker_spellings():
    a = _parse([])
    assert a.rules is True and a.profiler is True and a.profiler_trace_steps == 0
    assert a.debugger is True and a.smdebug_out_dir == "" and a.stop_on_rule == ""
    a = _parse(["--rules", "False", "--profiler_interval", "0.5", "--stop_on_rule", "overfit",
                "--profiler-trace-steps", "3", "--rule_params", "overfit.patience=2",
                "--debugger", "false"])
    assert a.rules is False and a.profiler_interval == 0.5 and a.stop_on_rule == "overfit"
    assert a.profiler_trace_steps == 3 and a.rule_params == "overfit.patience=2"
    assert a.debugger is False
    with pytest.raises(SystemExit):
        _parse(["--rules", "maybe"])


def test_build_callbacks_follows_flags(tmp_path):
    kinds = lambda argv: [type(c).__name__ for c in diagnostics.build_callbacks(_parse(argv))]
    assert kinds([]) == ["SmdebugCallback", "RulesCallback", "ProfilerCallback"]
    assert kinds(["--rules", "False", "--profiler", "False", "--debugger", "False"]) == []
    with pytest.raises(ValueError):
        diagnostics.build_callbacks(_parse(["--stop-on-rule", "dead_relu"]))


@pytest.mark.slow
def test_training_main_writes_both_reports(tmp_path, monkeypatch):
    training = pytest.importorskip("imgclf.training")
    monkeypatch.setenv("SMDEBUG_CONFIG_FILE_PATH", str(tmp_path / "no-debughookconfig.json"))
    data = _dataset(tmp_path / "data")
    out = tmp_path / "output"
    code = training.main([
        "--data-dir", str(data), "--model-dir", str(tmp_path / "model"),
        "--output-data-dir", str(out), "--checkpoint-dir", str(tmp_path / "ckpt"),
        "--epochs", "2", "--batch-size", "4", "--image-size", "32", "--weights", "none",
        "--num-workers", "0", "--arch", "resnet18",
        "--profiler-interval", "0.1", "--profiler-trace-steps", "2", "--profiler-trace-start", "1",
        "--smdebug-out-dir", str(tmp_path / "smdebug")])
    assert code == 0
    rules = json.loads((out / R.REPORT_FILE).read_text())
    assert set(rules["rules"]) == set(R.RULE_CLASSES)
    assert rules["rules"]["Overfit"]["evaluations"] == 1   # in the loop epoch 1 is skipped (BN)
    assert rules["rules"]["PoorWeightInitialization"]["evaluations"] == 1
    summary = json.loads((out / P.SUMMARY_FILE).read_text())
    assert summary["train_step_count"] == 6           # 12 images / batch 4 x 2 epochs
    assert (out / P.REPORT_FILE).is_file()
    assert (out / P.TRACE_DIR / "trace.pt.trace.json").is_file()
    assert "Training rules" in (out / P.REPORT_FILE).read_text()
    # the smdebug recording of the same run feeds the offline rules
    from imgclf.diagnostics.smdebug_rules import run_offline
    offline = run_offline(str(tmp_path / "smdebug"))
    assert offline["rules"]["Overfit"]["evaluations"] == 2   # offline: AWS's start_step 0
