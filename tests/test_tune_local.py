"""``smctl tune --local``: real local studies on generated images, each trial ``code/train.py``
under the real sagemaker-training ``train`` entry (the host runner), Optuna underneath.

Kept tiny (16 px, 3 colour classes, a dozen images, 1-3 epochs, rules and profiler off) so the
studies take seconds per trial on two cores.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.stub import ANY

from imgclf.metrics import parse_metrics
from smctl.cli import main
from smctl_helpers import IMAGE, ROLE, aws_env, base_args, stubs  # noqa: F401
from training_support import COLORS, REPO, write_color_images

FAST = ["--hp", "weights=none", "--hp", "image-size=16", "--hp", "rules=false",
        "--hp", "profiler=false"]
RANGES = '''[tune.ranges]
lr = { type = "continuous", min = 0.001, max = 0.01, scaling = "Logarithmic" }
batch_size = { type = "categorical", values = [4, 8] }
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_color_images(tmp_path_factory.mktemp("tiny"), COLORS,
                              {"train": 4, "valid": 2, "test": 2}, size=16)


def smctl_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "code"), str(REPO / "scripts")])
    return env


def smctl(cwd: Path, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smctl", *argv], cwd=cwd, env=smctl_env(),
                          capture_output=True, text=True, timeout=timeout)


def rows(output: Path) -> list[dict]:
    with open(output / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def processes_under(folder: Path) -> list[int]:
    """PIDs whose environment points SAGEMAKER_BASE_DIR into ``folder`` (a trial's processes)."""
    found = []
    needle = f"SAGEMAKER_BASE_DIR={folder}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ:
            found.append(int(pid))
    return found


# -- refusals before any trial starts (exit 2, one line) ------------------------------------------
@pytest.mark.parametrize("extra, toml, words", [
    ([], "", "--local needs --data DIR"),
    (["--data", "missing"], "", "data folder missing does not exist"),
    (["--data", "empty"], "", "has no train/<class>/ images"),
    (["--data", "DATA", "--hp", "epoch=2"], "", "unknown hyperparameter 'epoch' - did you mean epochs"),
    (["--data", "DATA"], '[tune.ranges]\nlr = { type = "continuous", min = -1, max = 0.1 }\n',
     "lr must be > 0"),
    (["--data", "DATA", "--strategy", "Grid"], "", "Grid search takes categorical ranges only"),
    (["--data", "DATA", "--strategy", "Hyperband", "--early-stopping", "Auto"], "",
     "Hyperband has its own early stopping"),
    (["--data", "DATA", "--max-jobs-not-improving", "0"], "", "--max-jobs-not-improving must be >= 1"),
])
def test_local_study_refusals_are_one_line_before_any_trial(aws_env, tiny, capsys, extra, toml, words):
    (aws_env / "empty" / "train").mkdir(parents=True)
    if toml:
        (aws_env / "smctl.toml").write_text(toml)
    argv = ["tune", "--local", "--output", "out", *[str(tiny) if a == "DATA" else a for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("smctl: error: ") and words in err[0], err
    assert not (aws_env / "out").exists()  # no study, no trial


def test_local_dry_run_prints_the_checked_plan(aws_env, tiny, capsys):
    (aws_env / "smctl.toml").write_text(RANGES)
    assert main(["tune", "--local", "--data", str(tiny), "--dry-run", "--hp", "batch-size=2",
                 "--max-jobs", "6", "--name", "exp1", *FAST]) == 0
    plan = json.loads(capsys.readouterr().out)[0]
    assert plan["action"] == "tune-local" and plan["max_jobs"] == 6 and plan["parallel"] == 2
    assert plan["output"].endswith("local/tune/exp1") and plan["strategy"] == "Bayesian"
    assert plan["space"]["batch-size"] == {"type": "categorical", "values": ["4", "8"]}
    assert "batch-size" not in plan["static"] and plan["static"]["image-size"] == "16"


# -- a real study ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_study_four_trials_two_parallel_then_best_and_from_tuning(aws_env, tiny, capsys,
                                                                        stubs):
    (aws_env / "smctl.toml").write_text(RANGES)
    out = aws_env / "study"
    rc = main(["tune", "--local", "--data", str(tiny), "--output", str(out), "--max-jobs", "4",
               "--max-parallel-jobs", "2", "--early-stopping", "Off", "--seed", "3",
               "--hp", "epochs=1", *FAST])
    cap = capsys.readouterr()
    assert rc == 0, cap.out[-3000:] + cap.err[-3000:]

    trials = rows(out)
    assert list(trials[0]) == ["trial", "state", "objective", "lr", "batch-size", "epochs_run",
                               "seconds"]
    assert len(trials) == 4 and {t["state"] for t in trials} == {"Completed"}
    for t in trials:  # the ranges are respected
        assert 0.001 <= float(t["lr"]) <= 0.01 and t["batch-size"] in ("4", "8")
        assert t["epochs_run"] == "1" and float(t["seconds"]) > 0
        tree = out / t["trial"]
        assert (tree / "output" / "success").exists() and (tree / "model" / "model.json").exists()
        sent = json.loads((tree / "input" / "config" / "hyperparameters.json").read_text())
        assert sent["lr"] == t["lr"] and sent["batch-size"] == t["batch-size"]
        assert sent["num-workers"] == "0"  # 2 cores / 2 trials: 1 thread each, no extra workers
        assert "batch_size" not in sent
        # the objective is the trial's own "average test loss" line
        own = parse_metrics((tree / "train.log").read_text())["average test loss"]
        assert float(t["objective"]) == pytest.approx(own[-1], abs=1e-9)
    # 2 in parallel: the second trial started before the first one ended
    lines = cap.out.splitlines()
    starts = [i for i, l in enumerate(lines) if " started: " in l]
    ends = [i for i, l in enumerate(lines) if " Completed after " in l]
    assert len(starts) == 4 and len(ends) == 4 and starts[1] < ends[0]

    best = json.loads((out / "best.json").read_text())
    lowest = min(trials, key=lambda t: float(t["objective"]))
    assert best["trial"] == lowest["trial"] and best["objective"] == float(lowest["objective"])
    assert best["hyperparameters"]["lr"] == lowest["lr"]
    assert best["hyperparameters"]["epochs"] == "1" and best["hyperparameters"]["weights"] == "none"
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 4  # history, slice, curves, importances
    assert "time inside trials / (wall time x" in html

    # the ranked table, at the end and from `smctl best OUTPUT`
    header = next(l for l in lines if l.startswith("lr "))
    assert header.split() == ["lr", "batch-size", "FinalObjectiveValue", "TrainingJobName",
                              "TrainingJobStatus", "TrainingStartTime", "TrainingEndTime",
                              "TrainingElapsedTimeSeconds"]
    assert main(["best", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    first = table[table.index(next(l for l in table if l.startswith("lr "))) + 1]
    assert first.split()[3] == best["trial"] and first.split()[2] == f"{best['objective']:.4f}"
    assert f"next: smctl train --from-tuning {out}" in table

    # the local winner trains on SageMaker: a request botocore's model accepts
    expected = {k: v for k, v in best["hyperparameters"].items() if k != "num-workers"}
    stubs["sagemaker"].add_response("create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:us-west-2:123456789012:training-job/final"}, {
        "TrainingJobName": "final", "AlgorithmSpecification": ANY, "RoleArn": ROLE,
        "InputDataConfig": ANY, "OutputDataConfig": ANY, "ResourceConfig": ANY,
        "StoppingCondition": ANY, "HyperParameters": {**expected, "epochs": "12"}})
    assert main(["train", *base_args(), "--image-uri", IMAGE, "--name", "final",
                 "--from-tuning", str(out), "--hp", "epochs=12"], client_factory=stubs) == 0
    assert f"best of the local study {out}" in capsys.readouterr().err


@pytest.mark.slow
def test_interrupt_resume_pruned_and_failed_trials(tmp_path, tiny):
    """Grid over lr x arch, one trial at a time: a good trial completes; SIGINT while the
    second runs stops it (nothing left running, recorded Stopped); the same command resumes:
    the completed trial is not rerun, the interrupted one runs again and the median rule
    stops it (its valid loss is inf), the unknown arch fails with train.py's reason."""
    (tmp_path / "smctl.toml").write_text('''[hyperparameters]
epochs = 3
batch-size = 4
lr-schedule = "constant"
[tune.ranges]
lr = { type = "categorical", values = [0.001, 50] }
arch = { type = "categorical", values = ["resnet18", "nosuchnet"] }
''')
    out = tmp_path / "grid"
    argv = ["tune", "--local", "--data", str(tiny), "--output", str(out), "--strategy", "Grid",
            "--max-parallel-jobs", "1", "--seed", "5", *FAST]
    proc = subprocess.Popen([sys.executable, "-m", "smctl", *argv], cwd=tmp_path,
                            env=smctl_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    second = out / "imgclf-002"
    deadline = time.monotonic() + 300
    while not (second / "train.log").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    time.sleep(1)  # the second trial is running (still importing torch: before its epoch 1)
    assert processes_under(second)
    proc.send_signal(signal.SIGINT)
    log1 = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, log1[-3000:]
    assert not processes_under(out), "a trial process was left running"
    first = rows(out)
    assert [(t["trial"], t["state"]) for t in first] == [("imgclf-001", "Completed"),
                                                         ("imgclf-002", "Stopped")]
    assert (first[0]["lr"], first[0]["arch"]) == ("0.001", "resnet18")
    log_before = (out / "imgclf-001" / "train.log").read_bytes()

    r = smctl(tmp_path, *argv)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    trials = {t["trial"]: t for t in rows(out)}
    assert trials["imgclf-001"]["state"] == "Completed"
    assert (out / "imgclf-001" / "train.log").read_bytes() == log_before  # not rerun
    assert " imgclf-001 started" not in r.stdout
    again = trials["imgclf-003"]  # the interrupted trial, queued again with its values
    assert (again["lr"], again["arch"], again["state"]) == ("50", "resnet18", "Stopped")
    assert 1 <= int(again["epochs_run"]) < 3
    assert "median rule: valid_loss=inf at epoch 1" in r.stdout
    failed = [t for t in trials.values() if t["state"] == "Failed"]
    assert sorted(t["lr"] for t in failed) == ["0.001", "50"]
    assert {t["arch"] for t in failed} == {"nosuchnet"} and len(trials) == 5
    assert "Failed after" in r.stdout and "unknown architecture 'nosuchnet'" in r.stdout
    assert json.loads((out / "best.json").read_text())["trial"] == "imgclf-001"


@pytest.mark.slow
def test_two_tuners_share_one_sqlite_study(tmp_path, tiny):
    """Two tuner processes, one study through --storage: distinct trial numbers, and --max-jobs
    counts the trials of both (each would run 2 on its own: 2 in all)."""
    (tmp_path / "smctl.toml").write_text(RANGES)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    common = ["tune", "--local", "--data", str(tiny), "--name", "shared", "--storage", url,
              "--max-jobs", "2", "--max-parallel-jobs", "1", "--strategy", "Random",
              "--hp", "epochs=1", *FAST]
    procs = [subprocess.Popen([sys.executable, "-m", "smctl", *common, "--output",
                               str(tmp_path / f"tuner{i}"), "--seed", str(i)], cwd=tmp_path,
                              env=smctl_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in (1, 2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(l[-2000:] for l in logs)
    ran = sorted(d.name for i in (1, 2) for d in (tmp_path / f"tuner{i}").iterdir()
                 if d.is_dir())
    assert ran == ["shared-001", "shared-002"]  # each number once, 2 in all
    assert sum(l.count(" started: ") for l in logs) == 2
    # both tuners see the whole study
    for i in (1, 2):
        assert [t["trial"] for t in rows(tmp_path / f"tuner{i}")] == ran


@pytest.mark.slow
def test_every_trial_failing_exits_1_with_the_reasons(aws_env, tiny, capsys):
    (aws_env / "smctl.toml").write_text(
        '[tune.ranges]\narch = { type = "categorical", values = ["nosuchnet"] }\n')
    assert main(["tune", "--local", "--data", str(tiny), "--output", "bad", "--strategy", "Grid",
                 *FAST]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("smctl: error: every trial failed: unknown architecture 'nosuchnet'")
    assert [t["state"] for t in rows(aws_env / "bad")] == ["Failed"]


@pytest.mark.slow
def test_max_runtime_stops_the_running_trials(aws_env, tiny, capsys):
    """AMT's study time limit: the running trials' process groups are stopped and recorded
    Stopped; with none completed the study exits 1."""
    (aws_env / "smctl.toml").write_text(RANGES)
    assert main(["tune", "--local", "--data", str(tiny), "--output", "rt", "--max-runtime", "2",
                 "--max-jobs", "4", "--hp", "epochs=50", *FAST]) == 1
    out = capsys.readouterr().out
    assert "stopping: --max-runtime 2s reached" in out and "no best training job yet" in out
    trials = rows(aws_env / "rt")
    assert [t["state"] for t in trials] == ["Stopped", "Stopped"]  # 2 ran, none started after
    assert not processes_under(aws_env / "rt")


@pytest.mark.parametrize("extra, words", [
    (["--data", "nowhere"], "data folder nowhere does not exist"),
    (["--data", "DATA", "--hp", "lr_shedule=step"], "did you mean lr-schedule"),
    (["--data", "DATA", "--hp", "epochs=0"], "epochs must be >= 1"),
])
def test_local_train_refuses_before_starting_a_job(tmp_path, tiny, extra, words):
    """`python -m smctl.local train` (make local-train): one line, exit 2, no tree written."""
    argv = [str(tiny) if a == "DATA" else a for a in extra]
    p = subprocess.run([sys.executable, "-m", "smctl.local", "train", "--runner", "host",
                        "--job-dir", "job", *argv], cwd=tmp_path, env=smctl_env(),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("smctl.local: error: ") and words in err[0], err
    assert not (tmp_path / "job").exists()
