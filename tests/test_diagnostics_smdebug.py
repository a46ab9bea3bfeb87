"""smdebug integration: hook from a SageMaker-style config, and the rules offline on real output."""

import json
import logging

import pytest
import torch
import torch.nn as nn

from diagnostics_helpers import make_blobs, mlp, run_loop
from imgclf.diagnostics import debugger, rules as R

smd = pytest.importorskip("smdebug.pytorch")


def _record(tmp_path, model, train, valid, epochs, **kw):
    out = tmp_path / "smdebug"
    cb = debugger.SmdebugCallback(use_sagemaker_config=False, out_dir=str(out))
    run_loop(model, [cb], train, valid, epochs=epochs, output_dir=tmp_path, **kw)
    return out


def test_offline_rules_on_recorded_smdebug_output(tmp_path):
    from imgclf.diagnostics.smdebug_rules import run_offline

    torch.manual_seed(0)
    # deep sigmoid net: vanishing gradients; tiny train set: overfit
    model = mlp(depth=14, hidden=16, act=nn.Sigmoid, kaiming=False)
    out = _record(tmp_path, model, make_blobs(64, seed=1), make_blobs(32, seed=2),
                  epochs=5, batch_size=16, lr=0.01)
    from smdebug.trials import create_trial
    trial = create_trial(str(out))
    assert trial.tensor_names(collection="losses")
    assert any(n.startswith("gradient/") for n in trial.tensor_names(collection="gradients"))
    assert trial.tensor_names(regex=debugger.ACTIVATION_INPUT_REGEX)      # activation inputs, early steps
    report = run_offline(str(out), str(tmp_path / "offline"))
    saved = json.loads((tmp_path / "offline" / R.REPORT_FILE).read_text())
    assert saved["source"] == "smdebug"
    vg = report["rules"]["VanishingGradient"]
    assert vg["status"] == R.ISSUES_FOUND
    assert vg["first_issue"]["values"]["min_mean_abs_gradient"] < 1e-7
    # Overfit/Overtraining saw one evaluation per epoch (TRAIN then EVAL segments)
    assert report["rules"]["Overfit"]["evaluations"] == 5
    assert report["rules"]["Overtraining"]["evaluations"] == 5
    assert report["rules"]["PoorWeightInitialization"]["evaluations"] == 1
    # 20 train steps = two windows of num_steps=10: one comparison
    assert report["rules"]["LossNotDecreasing"]["evaluations"] == 1


def test_offline_and_in_loop_agree_on_the_same_run(tmp_path):
    """Same cores: the offline Overfit ratios equal the in-loop ones up to batch weighting."""
    from imgclf.diagnostics.smdebug_rules import run_offline

    torch.manual_seed(0)
    out = tmp_path / "smdebug"
    hook_cb = debugger.SmdebugCallback(use_sagemaker_config=False, out_dir=str(out))
    rules_cb = R.RulesCallback(interval=1)
    # batch 16 divides both set sizes: weighted and unweighted means coincide
    run_loop(mlp(hidden=128), [hook_cb, rules_cb], make_blobs(32, seed=1, noise=3.0),
             make_blobs(64, seed=2, noise=3.0), epochs=4, batch_size=16, lr=0.01, opt="adam",
             output_dir=tmp_path)
    offline = run_offline(str(out))
    in_loop = rules_cb.report()
    a = [e["values"]["ratio"] for e in in_loop["rules"]["Overfit"]["history"]]
    b = [e["values"]["ratio"] for e in offline["rules"]["Overfit"]["history"]]
    assert a == pytest.approx(b, rel=1e-4)
    assert in_loop["rules"]["Overfit"]["status"] == offline["rules"]["Overfit"]["status"]
    a = [e["values"]["loss_mean"] for e in in_loop["rules"]["LossNotDecreasing"]["history"]]
    b = [e["values"]["loss_mean"] for e in offline["rules"]["LossNotDecreasing"]["history"]]
    assert a == pytest.approx(b, rel=1e-4)


def test_hook_from_sagemaker_debug_hook_config(tmp_path, monkeypatch, caplog):
    out = tmp_path / "tensors"
    cfg = tmp_path / "debughookconfig.json"
    cfg.write_text(json.dumps({
        "LocalPath": str(out),
        "HookParameters": {"save_interval": "2"},
        "CollectionConfigurations": [{"CollectionName": "losses",
                                      "CollectionParameters": {"save_interval": "1"}}],
    }))
    monkeypatch.setenv(debugger.CONFIG_PATH_ENV, str(cfg))
    caplog.set_level(logging.INFO, logger="imgclf.diagnostics.debugger")
    cb = debugger.SmdebugCallback(use_sagemaker_config=True)
    run_loop(mlp(), [cb], make_blobs(64, seed=1), make_blobs(32, seed=2), epochs=1,
             batch_size=16, output_dir=tmp_path)
    assert cb.hook is not None
    assert "hook created from SageMaker debug hook config" in caplog.text
    from smdebug.trials import create_trial
    trial = create_trial(str(out))
    loss = trial.tensor_names(collection="losses")[0]
    assert trial.tensor(loss).steps(mode=smd.modes.TRAIN) == [0, 1, 2, 3]
    assert trial.tensor(loss).steps(mode=smd.modes.EVAL) == [0, 1]


def test_no_config_means_no_hook_and_one_log_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(debugger.CONFIG_PATH_ENV, str(tmp_path / "absent.json"))
    caplog.set_level(logging.INFO, logger="imgclf.diagnostics.debugger")
    cb = debugger.SmdebugCallback(use_sagemaker_config=True)
    run_loop(mlp(), [cb], make_blobs(32, seed=1), make_blobs(16, seed=2), epochs=1,
             batch_size=16, output_dir=tmp_path)
    assert cb.hook is None
    lines = [r for r in caplog.records if r.name == "imgclf.diagnostics.debugger"]
    assert len(lines) == 1 and "Debugger hook off" in lines[0].getMessage()


def test_offline_refuses_empty_folder(tmp_path):
    from imgclf.diagnostics.smdebug_rules import run_offline
    with pytest.raises(FileNotFoundError):
        run_offline(str(tmp_path))


def test_without_smdebug_training_is_unchanged(tmp_path, monkeypatch, caplog):
    import sys
    monkeypatch.setitem(sys.modules, "smdebug.pytorch", None)   # import now raises ImportError
    caplog.set_level(logging.INFO, logger="imgclf.diagnostics.debugger")
    cb = debugger.SmdebugCallback(use_sagemaker_config=False, out_dir=str(tmp_path / "smd"))
    ctx = run_loop(mlp(), [cb], make_blobs(32, seed=1), make_blobs(16, seed=2), epochs=1,
                   batch_size=16, output_dir=tmp_path)
    assert cb.hook is None and len(ctx.history) == 1
    assert "smdebug: not importable" in caplog.text
    assert not (tmp_path / "smd").exists()
