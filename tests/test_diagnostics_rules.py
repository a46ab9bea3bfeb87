"""Each Debugger-style rule fires on a run built to trigger it and stays quiet on a healthy run."""

import json
import logging
import math

import pytest
import torch
import torch.nn as nn

from diagnostics_helpers import make_blobs, mlp, run_loop
from imgclf.diagnostics import rules as R


def _run(tmp_path, model, train, valid, **kw):
    cb = R.RulesCallback(interval=kw.pop("interval", 5), rule_params=kw.pop("rule_params", None),
                         stop_on=kw.pop("stop_on", ()))
    ctx = run_loop(model, [cb], train, valid, output_dir=tmp_path, **kw)
    report = json.loads((tmp_path / R.REPORT_FILE).read_text())
    return cb, ctx, report


def _status(report, rule):
    return report["rules"][rule]["status"]


def test_healthy_run_finds_no_issues(tmp_path, caplog):
    torch.manual_seed(0)
    caplog.set_level(logging.INFO, logger="imgclf.diagnostics.rules")
    cb, ctx, report = _run(tmp_path, mlp(), make_blobs(2048, seed=1), make_blobs(512, seed=2),
                           epochs=3, batch_size=64, lr=0.003, opt="adam")
    for rule in R.RULE_CLASSES:
        assert _status(report, rule) == R.NO_ISSUES_FOUND, (rule, report["rules"][rule])
        assert report["rules"][rule]["evaluations"] >= 1
    assert ctx.stop_reason is None
    assert "rule=Overfit status=NoIssuesFound" in caplog.text


def test_loss_not_decreasing_fires_with_lr_far_too_high(tmp_path):
    torch.manual_seed(0)
    cb, ctx, report = _run(tmp_path, mlp(), make_blobs(2048, seed=1), make_blobs(256, seed=2),
                           epochs=1, batch_size=64, lr=50.0)
    r = report["rules"]["LossNotDecreasing"]
    assert r["status"] == R.ISSUES_FOUND, r
    # a non-finite loss is an issue at once, a climbing one after two 10-step windows
    fi = r["first_issue"]
    assert fi["message"] == "loss is not finite" or fi["step"] >= 29, fi


def test_vanishing_gradient_fires_on_deep_sigmoid_net(tmp_path):
    torch.manual_seed(0)
    model = mlp(depth=14, hidden=16, act=nn.Sigmoid, kaiming=False)
    cb, ctx, report = _run(tmp_path, model, make_blobs(256, seed=1), make_blobs(64, seed=2),
                           epochs=1, batch_size=32, lr=0.01)
    r = report["rules"]["VanishingGradient"]
    assert r["status"] == R.ISSUES_FOUND
    first = r["first_issue"]["values"]
    assert first["min_mean_abs_gradient"] < 1e-7
    assert first["min_tensor"].startswith("fc0")   # the layer furthest from the loss


def test_overfit_fires_on_tiny_train_set(tmp_path):
    torch.manual_seed(0)
    # 12 training samples, a big net: memorises them; validation loss stays high
    cb, ctx, report = _run(tmp_path, mlp(hidden=256), make_blobs(12, seed=1, noise=3.0),
                           make_blobs(512, seed=2, noise=3.0), epochs=30, batch_size=12,
                           lr=0.01, opt="adam")
    r = report["rules"]["Overfit"]
    assert r["status"] == R.ISSUES_FOUND
    assert r["first_issue"]["values"]["ratio"] > 0.1


def test_overtraining_fires_and_stops_training_when_asked(tmp_path):
    torch.manual_seed(0)
    # validation labels are random: validation loss can never improve
    cb, ctx, report = _run(tmp_path, mlp(hidden=64), make_blobs(64, seed=1),
                           make_blobs(128, seed=2, random_labels=True), epochs=40, batch_size=32,
                           lr=0.01, opt="adam", stop_on=["overtraining"],
                           # the training loss reaches ~0 and would trip patience_train first
                           rule_params={"Overtraining": {"patience_train": 1000}})
    r = report["rules"]["Overtraining"]
    assert r["status"] == R.ISSUES_FOUND
    assert r["first_issue"]["values"]["epochs_without_valid_improvement"] >= 10
    assert ctx.stop_reason and "Overtraining" in ctx.stop_reason
    assert len(ctx.history) < 40          # stopped early
    assert report["stop_on"] == ["Overtraining"]


def test_poor_weight_initialization_fires_on_huge_init(tmp_path):
    torch.manual_seed(0)
    model = mlp(depth=4, hidden=64, init_std=3.0)
    cb, ctx, report = _run(tmp_path, model, make_blobs(512, seed=1), make_blobs(64, seed=2),
                           epochs=1, batch_size=32, lr=0.01)
    r = report["rules"]["PoorWeightInitialization"]
    assert r["status"] == R.ISSUES_FOUND
    assert r["first_issue"]["values"]["activation_variance_ratio"] > 10
    assert r["evaluations"] == 1           # evaluated once, on the first `steps` steps
    assert cb._act_handles == []           # activation hooks are gone after the window


def test_rule_params_override_and_validate():
    parsed = R.parse_rule_params("overfit.ratio_threshold=0.5, loss_not_decreasing.num_steps=3")
    assert parsed == {"Overfit": {"ratio_threshold": "0.5"}, "LossNotDecreasing": {"num_steps": "3"}}
    cores = R.build_cores(parsed)
    assert cores["Overfit"].params["ratio_threshold"] == 0.5
    assert cores["LossNotDecreasing"].params["num_steps"] == 3
    with pytest.raises(ValueError):
        R.build_cores({"Overfit": {"nope": 1}})
    with pytest.raises(ValueError):
        R.canonical_rule_name("dead_relu")


def test_loss_not_decreasing_core_windows_and_nan():
    losses = [4, 4, 3, 3, 3, 3, 9, 9, math.nan, 1]
    core = R.LossNotDecreasing(num_steps=2, patience=1)    # AWS: every bad window counts
    got = [(e.step, e.issues) for e in (core.observe_loss(s, l) for s, l in enumerate(losses)) if e]
    # window means 4 | 3 (ok) | 3 (no decrease) | 9 (rose above best); nan: at once
    assert got == [(3, False), (5, True), (7, True), (8, True)]
    core = R.LossNotDecreasing(num_steps=2)                 # default: 2 bad windows in a row
    got = [(e.step, e.issues) for e in (core.observe_loss(s, l) for s, l in enumerate(losses)) if e]
    assert got == [(3, False), (5, False), (7, True), (8, True)]
    assert "(2 windows in a row)" in core.evaluations[2].message
    assert "not finite" in core.evaluations[-1].message
    line = core.evaluations[0].log_line()
    assert line.startswith("rule=LossNotDecreasing status=NoIssuesFound step=3 ")


def test_stop_under_ddp_waits_for_epoch_end_and_agrees(tmp_path):
    """Under torch.distributed a rule-triggered stop is all-reduced at epoch end, not mid-epoch."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        cb, ctx, report = _run(tmp_path, mlp(), make_blobs(2048, seed=1), make_blobs(64, seed=2),
                               epochs=3, batch_size=64, lr=50.0, stop_on=["loss_not_decreasing"])
    finally:
        dist.destroy_process_group()
    first = report["rules"]["LossNotDecreasing"]["first_issue"]["step"]
    assert first < 31                                  # fired inside epoch 1 (32 steps)...
    assert ctx.global_step == 32 and len(ctx.history) == 1   # ...stopped after it, together
    assert "LossNotDecreasing" in ctx.stop_reason


def test_resumed_run_skips_initialization_and_keeps_overtraining_patience(tmp_path):
    from types import SimpleNamespace

    from imgclf.callbacks import TrainContext

    cb = R.RulesCallback(rule_params={"Overtraining": {"patience_validation": 3}})
    ctx = TrainContext(model=mlp(), optimizer=None, criterion=None, args=SimpleNamespace(),
                       device=torch.device("cpu"), output_dir=str(tmp_path), global_step=40,
                       history=[{"train_loss": 1.0 - 0.1 * i, "valid_loss": v}
                                for i, v in enumerate([1.0, 1.2, 1.3])])
    cb.on_train_begin(ctx)
    assert "PoorWeightInitialization" not in cb.cores and cb._act_handles == []
    cb.on_epoch_end(ctx, 4, {"train_loss": 0.6, "valid_loss": 1.4})   # 3rd epoch w/o improvement
    assert cb.cores["Overtraining"].evaluations[-1].issues


# ---- rules that don't cry wolf (figures: make bench-rules; README "Debugging and profiling") ----

def _windows(core, means, num_steps=10, start=0):
    """Feed window means as num_steps equal losses each; the statuses of the evaluations."""
    out, step = [], start
    for m in means:
        for _ in range(num_steps):
            ev = core.observe_loss(step, m)
            step += 1
        out.append(ev.status if ev else None)
    return out


def test_one_noisy_window_of_a_healthy_run_is_not_an_issue():
    # make demo's healthy run: falling per epoch, one 10-step window 8% above its best
    healthy = [2.2, 1.9, 1.7, 1.84, 1.5, 1.4, 1.3, 1.25, 1.2]
    assert R.ISSUES_FOUND in _windows(R.LossNotDecreasing(patience=1), healthy)   # AWS: alarm
    assert R.ISSUES_FOUND not in _windows(R.LossNotDecreasing(), healthy)


@pytest.mark.parametrize("means", [
    [1.386, 1.387, 1.385, 1.388, 1.386, 1.389, 1.386],          # lr 0 / frozen: flat
    [2.3, 2.6, 3.4, 5.0, 9.0],                                   # lr far too high: climbing
])
def test_a_loss_that_does_not_fall_is_still_an_issue(means):
    assert R.ISSUES_FOUND in _windows(R.LossNotDecreasing(), means)


def test_loss_not_decreasing_waits_for_the_warmup_but_not_for_nan():
    core = R.LossNotDecreasing(start_step=20)
    # the loss rises during the warmup (steps 0-19): not judged
    assert _windows(core, [1.4, 2.0]) == [None, None]
    assert _windows(core, [1.9, 1.7, 1.5], start=20) == [None, R.NO_ISSUES_FOUND, R.NO_ISSUES_FOUND]
    assert core.observe_loss(3, math.nan).issues          # non-finite: an issue at once


def test_overfit_skips_the_first_epoch_batch_norm_gap_but_catches_a_lasting_one():
    # a healthy run: BN running statistics lag in epoch 1, then valid follows train
    core = R.Overfit(start_step=10)
    got = [core.observe_phase(s, t, v) for s, t, v in
           [(9, 1.41, 2.97), (19, 1.2, 1.25), (29, 1.0, 1.05), (39, 0.9, 1.12), (49, 0.85, 0.9)]]
    assert got[0] is None and not any(e.issues for e in got[1:])
    # labels shuffled: train falls, validation stays high
    core = R.Overfit(start_step=10)
    got = [core.observe_phase(s, t, v) for s, t, v in
           [(9, 1.39, 1.40), (19, 1.2, 1.45), (29, 0.9, 1.6), (39, 0.6, 1.9)]]
    assert [e.issues for e in got[1:]] == [False, True, True]


def test_loop_start_steps_follow_the_warmup_and_the_first_epoch(tmp_path):
    from types import SimpleNamespace
    from imgclf.callbacks import TrainContext
    ctx = TrainContext(model=mlp(), optimizer=None, criterion=None, device=torch.device("cpu"),
                       args=SimpleNamespace(lr_schedule="cosine", warmup_epochs=2.0),
                       output_dir=str(tmp_path), steps_per_epoch=15)
    cb = R.RulesCallback()
    cb.on_train_begin(ctx)
    assert cb.cores["LossNotDecreasing"].params["start_step"] == 30
    assert cb.cores["Overfit"].params["start_step"] == 30
    ctx.args = SimpleNamespace(lr_schedule="step", warmup_epochs=2.0)
    cb = R.RulesCallback(rule_params={"Overfit": {"start_step": "0"}})
    cb.on_train_begin(ctx)
    assert cb.cores["LossNotDecreasing"].params["start_step"] == 0     # no warmup
    assert cb.cores["Overfit"].params["start_step"] == 0               # given explicitly
    ctx.args = SimpleNamespace(lr_schedule="cosine", warmup_epochs=2.0)
    aws = R.RulesCallback(aws=True, report_file="rules_report_aws.json")   # bench-rules' baseline
    aws.on_train_begin(ctx)
    assert aws.cores["Overfit"].params == {"start_step": 0, "patience": 1, "ratio_threshold": 0.1}
    assert aws.cores["LossNotDecreasing"].params["patience"] == 1


def test_poor_init_stall_counts_only_far_above_the_chance_loss():
    noisy = [1.38, 1.40, 1.39, 1.41, 1.385, 1.395, 1.40, 1.39, 1.41, 1.40]  # warmup: ln 4 + noise
    exploding = [94.0, 97.0, 110.0, 96.0, 118.0, 101.0, 99.0, 120.0, 105.0, 98.0]
    def evaluate(losses, **params):
        core = R.PoorWeightInitialization(**params)
        for step, loss in enumerate(losses):
            core.observe_gradient_range(step, -0.01, 0.01)
            core.observe_loss(step, loss)
        return core.evaluations[0]
    aws = evaluate(noisy)                                # AWS: any stall is an issue
    assert aws.issues and "no new minimum" in aws.message
    assert not evaluate(noisy, num_classes=4).issues     # the loop: near ln 4, a healthy start
    ev = evaluate(exploding, num_classes=4)              # confidently wrong: still an issue
    assert ev.issues and ev.values["chance_loss"] == pytest.approx(math.log(4))
