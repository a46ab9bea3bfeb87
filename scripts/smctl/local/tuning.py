"""``smctl tune --local``: a SageMaker-style tuning job on this machine, on Optuna's ask/tell.

The same search space, objective and strategies as ``smctl tune`` (:func:`smctl.tuning.resolve_study`
checks them through train.py's parser), but each trial is a local training job run by the local
job runner (:mod:`smctl.local.runner`): ``code/train.py`` under the real sagemaker-training
``train`` entry on a per-trial /opt/ml tree, or ``docker run IMAGE train`` with that tree mounted.

    smctl tune --local --data sample_data/fashion --max-jobs 4 --max-parallel-jobs 2 \\
        --hp epochs=2 --hp weights=none --hp image-size=32
    smctl best local/tune/imgclf           # the ranked table, as for a SageMaker tuning job
    smctl train --from-tuning local/tune/imgclf   # the local winner on SageMaker

Strategies map to AMT's: Bayesian = TPE (multivariate), Random, Grid (categorical ranges only,
every combination), Hyperband = Optuna's HyperbandPruner over epochs (early stopping off, as AMT).
Early stopping ``Auto`` = AMT's median rule on the per-epoch validation loss (Optuna's
MedianPruner): a trial whose valid_loss is worse than the median of the completed trials at the
same epoch is stopped and recorded ``Stopped``. Intermediate values and the objective ("average
test loss") are read from each trial's own log with ``imgclf.metrics``' regexes, as SageMaker
reads the metric definitions.

The study lives in OUTPUT (``study.db``, or ``--storage URL``: any Optuna RDB URL, so tuner
processes on several machines can share one study): the same command again resumes it. Trials
stopped by Ctrl-C/SIGTERM are recorded ``Stopped`` and queued again with the same
hyperparameters; completed trials are never rerun.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import math
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imgclf import resources
from imgclf.metrics import OBJECTIVE_METRIC, OBJECTIVE_TYPE, parse_metrics

from smctl import schema
from smctl.errors import EXIT_ERROR, EXIT_INTERRUPTED, ConfigError, SmctlError
from smctl.local.runner import (Job, dataset_channels, make_runner,
                                sigterm_as_interrupt)
from smctl.util import hp_string

STUDY_FILE = "study.json"
DEFAULT_STORAGE_FILE = "study.db"
INTERMEDIATE_METRIC = "valid_loss"
#: Hyperparameters the tuner sets for this machine's split (not carried to SageMaker).
MACHINE_HYPERPARAMETERS = ("num-workers",)
POLL_S = 0.5


def add_arguments(p) -> None:
    g = p.add_argument_group(
        "local tuning (--local)",
        "Optuna on this machine, each trial a local training job. With --local, --data DIR is a "
        "local folder in the dogImages layout and --max-runtime SECONDS the whole study's time "
        "limit (AMT's); the other flags mean what they mean for SageMaker.")
    g.add_argument("--local", action="store_true",
                   help="run the study here: each trial a local training job (no AWS)")
    g.add_argument("--output", metavar="DIR", help="the study's folder (default: local/tune/NAME)")
    g.add_argument("--runner", choices=("host", "container"),
                   help="host: code/train.py under the sagemaker-training `train` entry; "
                        "container: docker run IMAGE train (default: host)")
    g.add_argument("--image", help="--runner container: the image (default: make -s image-name)")
    g.add_argument("--storage", metavar="URL",
                   help="Optuna RDB URL shared by tuner processes, e.g. postgresql://... or "
                        "sqlite:////path/study.db (default: OUTPUT/study.db)")
    g.add_argument("--seed", type=int, help="sampler seed (SageMaker: RandomSeed; default: none)")
    g.add_argument("--target-objective", type=float, metavar="VALUE",
                   help="stop once a trial's objective is at or below VALUE (SageMaker: "
                        "TuningJobCompletionCriteria)")
    g.add_argument("--max-jobs-not-improving", type=int, metavar="N",
                   help="stop after N trials in a row that did not improve the best objective "
                        "(SageMaker: BestObjectiveNotImproving)")


# -- what a study is made of ---------------------------------------------------------------------
@dataclass
class LocalStudy:
    name: str
    output: Path
    storage: str
    strategy: str
    max_jobs: int
    parallel: int
    early_stopping: str
    space: dict[str, dict[str, Any]]
    static: dict[str, str]
    channels: dict[str, Path]
    runner_kind: str = "host"
    image: str | None = None
    seed: int | None = None
    target: float | None = None
    max_not_improving: int | None = None
    max_runtime: float | None = None


def resolve(args, settings) -> LocalStudy:
    """Every check that can refuse the study, before any trial starts (ConfigError: exit 2)."""
    from smctl.tuning import resolve_study
    name = args.name or args.base_name
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ConfigError(f"invalid study name {name!r}", "use letters, digits, - and _")
    if not args.data:
        raise ConfigError("--local needs --data DIR", "a folder in the dogImages layout "
                                                      "(train/ valid/ test/ of NNN.Class/*.jpg)")
    try:
        channels = dataset_channels(Path(args.data))
    except ValueError as e:
        raise ConfigError(str(e), "make sample-data gives sample_data/fashion") from None
    study = resolve_study(settings, args)
    if study["parallel"] < 1 or study["max_jobs"] < 1:
        raise ConfigError("--max-jobs and --max-parallel-jobs must be >= 1")
    for flag, value in (("--max-jobs-not-improving", args.max_jobs_not_improving),
                        ("--max-runtime", args.max_runtime_s)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    max_jobs = study["max_jobs"]
    if study["strategy"] == "Grid":  # every combination, as AMT
        max_jobs = math.prod(len(s["values"]) for s in study["space"].values())
    image = None
    args.runner = args.runner or "host"
    if args.runner == "container":
        from smctl.local.runner import local_image
        image = local_image(args.image, what="--runner container")
    output = Path(args.output or Path("local") / "tune" / name).absolute()
    storage = args.storage or f"sqlite:///{output / DEFAULT_STORAGE_FILE}"
    return LocalStudy(name=name, output=output, storage=storage, strategy=study["strategy"],
                      max_jobs=max_jobs, parallel=study["parallel"],
                      early_stopping=study["early_stopping"], space=study["space"],
                      static=study["static"], channels=channels, runner_kind=args.runner,
                      image=image, seed=args.seed, target=args.target_objective,
                      max_not_improving=args.max_jobs_not_improving,
                      max_runtime=args.max_runtime_s)


# -- the machine split ----------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    """GPU tokens a trial may be given as its CUDA_VISIBLE_DEVICES: the tuner's own
    CUDA_VISIBLE_DEVICES entries as written (host indices or UUIDs, passed on unchanged), else
    nvidia-smi -L's indices, else none. (imgclf.resources.visible_gpus gives CUDA ordinals
    inside this process, which a child with its own CUDA_VISIBLE_DEVICES cannot use.)"""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        p = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(p.stdout.splitlines()) if line.startswith("GPU ")] \
        if p.returncode == 0 else []


def machine_split(parallel: int, static: dict[str, str], space: dict) -> tuple[dict[str, str], dict[str, str]]:
    """(hyperparameters, env) per trial on CPU: the cores divided between the parallel trials,
    as torch threads (OMP_NUM_THREADS) and DataLoader workers, unless the user set them."""
    per_trial = max(1, resources.cpu_count() // parallel)
    hps = {}
    if "num-workers" not in static and "num-workers" not in space:
        hps["num-workers"] = str(per_trial // 2)  # workers share the trial's cores
    threads = str(per_trial)
    return hps, {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


# -- Optuna ---------------------------------------------------------------------------------------
def _optuna():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def distributions(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The search space as Optuna distributions (Auto scaling = linear; ReverseLogarithmic is
    sampled linearly, Optuna has no such scale)."""
    d = _optuna().distributions
    out = {}
    for name, spec in space.items():
        if spec["type"] == "categorical":
            out[name] = d.CategoricalDistribution(list(spec["values"]))
        elif spec["type"] == "integer":
            out[name] = d.IntDistribution(spec["min"], spec["max"],
                                          log=spec["scaling"] == "Logarithmic")
        else:
            out[name] = d.FloatDistribution(spec["min"], spec["max"],
                                            log=spec["scaling"] == "Logarithmic")
    return out


def sampler_and_pruner(cfg: LocalStudy):
    optuna = _optuna()
    s, p = optuna.samplers, optuna.pruners
    if cfg.strategy == "Grid":
        sampler = s.GridSampler({k: v["values"] for k, v in cfg.space.items()}, seed=cfg.seed)
    elif cfg.strategy == "Random":
        sampler = s.RandomSampler(seed=cfg.seed)
    else:  # Bayesian, and Hyperband's sampler
        sampler = s.TPESampler(multivariate=True, seed=cfg.seed)
    if cfg.strategy == "Hyperband":
        epochs = int(cfg.static.get("epochs", schema.default("epochs")))
        if "epochs" in cfg.space:
            epochs = int(cfg.space["epochs"].get("max", epochs))
        pruner = p.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    elif cfg.early_stopping == "Auto":
        pruner = p.MedianPruner(n_startup_trials=1, n_warmup_steps=0, interval_steps=1)
    else:
        pruner = p.NopPruner()
    return sampler, pruner


def storage_for(url: str):
    optuna = _optuna()
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def open_study(cfg: LocalStudy, sampler=None, pruner=None):
    optuna = _optuna()
    cfg.output.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        try:
            with _creation_lock(cfg.storage):
                study = optuna.create_study(study_name=cfg.name, storage=storage_for(cfg.storage),
                                            sampler=sampler, pruner=pruner, load_if_exists=True,
                                            direction=OBJECTIVE_TYPE.lower())
            break
        except Exception as e:  # noqa: BLE001 - a bad URL or an unreachable database: one line
            # Two tuners creating one fresh database race on its tables (schema, alembic
            # version row): the loser retries.
            text = str(e)
            if ("already exists" in text or "UNIQUE constraint" in text
                    or "IntegrityError" in type(e).__name__) and attempt < 4:
                time.sleep(1 + attempt)
                continue
            raise ConfigError(f"cannot open the study storage {redact(cfg.storage)}: "
                              f"{type(e).__name__}: {' '.join(str(e).split())[:200]}",
                              "check --storage") from None
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", cfg.space)
        study.set_user_attr("strategy", cfg.strategy)
        study.set_user_attr("objective", OBJECTIVE_METRIC)
    elif stored != json.loads(json.dumps(cfg.space)):
        raise ConfigError(f"the study {cfg.name} in {redact(cfg.storage)} was made with other "
                          f"ranges ({', '.join(stored)})",
                          "use the same [tune.ranges], or another --name / --output")
    return study


@contextlib.contextmanager
def _creation_lock(url: str):
    """For a SQLite file: an flock beside it while the schema and study are created, so two
    tuners on one machine do not race on a fresh database (other RDBs: the retry above)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix + ":memory:":
        yield
        return
    import fcntl
    path = Path(url[len(prefix):])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def redact(url: str) -> str:
    """A storage URL without its password."""
    head, sep, tail = url.partition("://")
    if "@" in tail and ":" in tail.split("@", 1)[0]:
        user = tail.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{tail.split('@', 1)[1]}"
    return url


# -- one trial ------------------------------------------------------------------------------------
@dataclass
class Running:
    trial: Any            # optuna.Trial
    name: str
    job: Job
    gpu: str | None
    epochs: int
    reported: int = 0

    @property
    def number(self) -> int:
        return self.trial.number


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def _counted(t) -> bool:
    """Trials that count towards --max-jobs: not a slot over the limit, not an interrupted one
    (queued again on resume)."""
    return not (t.user_attrs.get("overflow") or t.user_attrs.get("interrupted"))


def state_of(t) -> str:
    """AMT's training job status of a stored trial."""
    name = t.state.name
    if name == "COMPLETE":
        return "Completed"
    if name == "PRUNED":
        return "Stopped"
    if name == "FAIL":
        return "Stopped" if t.user_attrs.get("state") == "Stopped" else "Failed"
    return "InProgress" if name == "RUNNING" else name.title()


def _tell(study, trial, value=None, state=None) -> None:
    """study.tell, except that GridSampler's "grid exhausted" study.stop(), which Optuna only
    allows inside optimize(), is ignored: the state is stored before it raises."""
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


class Tuner:
    def __init__(self, cfg: LocalStudy, study, runner):
        self.cfg, self.study, self.runner = cfg, study, runner
        self.dists = distributions(cfg.space)
        gpus = visible_gpus()  # on a GPU host one GPU per trial
        self.free_gpus = list(gpus)
        self.slots = cfg.parallel if not gpus else min(cfg.parallel, len(gpus))
        self.machine_hps, self.env = machine_split(self.slots, cfg.static, cfg.space)
        self.session_seconds = 0.0
        self.session_trials = 0
        self.stopping: str | None = None

    # reservations: trial numbers come from the storage, so two tuners never share one
    def reserve(self):
        optuna = _optuna()
        trial = self.study.ask(self.dists)
        before = [t for t in self.study.get_trials(deepcopy=False)
                  if t.number < trial.number and _counted(t)]
        if len(before) >= self.cfg.max_jobs:
            trial.set_user_attr("overflow", True)
            _tell(self.study, trial, state=optuna.trial.TrialState.FAIL)
            return None
        return trial

    def start(self, trial) -> Running:
        name = f"{self.cfg.name}-{trial.number + 1:03d}"
        tuned = {k: hp_string(v) for k, v in trial.params.items()}
        hps = {**self.cfg.static, **self.machine_hps, **tuned}
        trial.set_user_attr("name", name)
        trial.set_user_attr("hyperparameters", hps)
        trial.set_user_attr("start", _now())
        trial.set_user_attr("output", str(self.cfg.output / name))
        gpu = self.free_gpus.pop(0) if self.free_gpus else None
        tree = self.runner.prepare(self.cfg.output / name,
                                   {**hps, "_tuning_objective_metric": OBJECTIVE_METRIC},
                                   self.cfg.channels)
        job = self.runner.launch(tree, name, env=self.env, gpu=gpu)
        where = f"GPU {gpu}" if gpu is not None else f"{self.env['OMP_NUM_THREADS']} thread(s)"
        _log(f"{name} started: " + " ".join(f"{k}={v}" for k, v in tuned.items()) + f" ({where})")
        return Running(trial, name, job, gpu, epochs=int(hps.get("epochs", schema.default("epochs"))))

    def step(self, r: Running) -> bool:
        """Report new epochs, prune, finish. True when the trial is over."""
        rc = r.job.poll()
        found = parse_metrics(r.job.log_text())
        losses = found.get(INTERMEDIATE_METRIC, [])
        for epoch in range(r.reported, len(losses)):
            value = losses[epoch] if math.isfinite(losses[epoch]) else float("inf")  # nan: worst
            r.trial.report(value, step=epoch + 1)
            r.reported = epoch + 1
            # Not after the last epoch: only the test evaluation is left, stopping saves nothing.
            if rc is None and epoch + 1 < r.epochs and r.trial.should_prune():
                self.finish(r, found, "Stopped", reason=f"median rule: valid_loss={value:.4f} "
                                                        f"at epoch {epoch + 1}", stop=True)
                return True
        if rc is None:
            return False
        objective = found.get(OBJECTIVE_METRIC)
        if rc == 0 and objective and math.isfinite(objective[-1]):
            self.finish(r, found, "Completed", value=objective[-1])
        elif rc == 0 and objective:
            self.finish(r, found, "Failed", reason=f"{OBJECTIVE_METRIC} is {objective[-1]}")
        else:
            lines = [l for l in r.job.log_text().splitlines() if l.strip()]
            reason = r.job.tree.failure or (f"exit {rc}, no failure file; last log line: "
                                             f"{lines[-1][:300] if lines else '(empty log)'}")
            if rc == 0:
                reason = f"no '{OBJECTIVE_METRIC}' line in the log"
            self.finish(r, found, "Failed", reason=reason)
        return True

    def finish(self, r: Running, found: dict, state: str, value: float | None = None,
               reason: str = "", stop: bool = False, interrupted: bool = False) -> None:
        optuna = _optuna()
        if stop:
            r.job.stop()
        seconds = time.monotonic() - r.job.started
        self.session_seconds += seconds
        self.session_trials += 1
        t = r.trial
        last = {k: v[-1] for k, v in found.items()}
        t.set_user_attr("end", _now())
        t.set_user_attr("seconds", round(seconds, 1))
        t.set_user_attr("epochs_run", len(found.get(INTERMEDIATE_METRIC, [])))
        t.set_user_attr("metrics", last)
        t.set_user_attr("valid_loss", found.get(INTERMEDIATE_METRIC, []))
        t.set_user_attr("state", state)
        if reason:
            t.set_user_attr("reason", reason[:1000])
        if interrupted:
            t.set_user_attr("interrupted", True)
        ts = optuna.trial.TrialState
        if state == "Completed":
            _tell(self.study, t, value)
        elif state == "Stopped" and not interrupted:
            _tell(self.study, t, state=ts.PRUNED)
        else:
            _tell(self.study, t, state=ts.FAIL)
        if interrupted:
            self.study.enqueue_trial(dict(t.params), skip_if_exists=False)
        if r.gpu is not None:
            self.free_gpus.append(r.gpu)
        detail = (f"{OBJECTIVE_METRIC}={value:.4f}" if value is not None
                  else (reason[:200] + ("..." if len(reason) > 200 else "")) if reason
                  else ", ".join(f"{k}={v:.4f}" for k, v in last.items()))
        _log(f"{r.name} {state} after {seconds:.0f}s, {len(found.get(INTERMEDIATE_METRIC, []))} "
             f"epoch(s): {detail}")

    # AMT's completion criteria
    def completion(self, t0: float) -> str | None:
        if self.cfg.max_runtime and time.monotonic() - t0 >= self.cfg.max_runtime:
            return f"--max-runtime {self.cfg.max_runtime:.0f}s reached"
        done = sorted((t for t in self.study.get_trials(deepcopy=False)
                       if t.state.name == "COMPLETE"), key=lambda t: t.user_attrs.get("end", ""))
        if self.cfg.target is not None and any(t.value <= self.cfg.target for t in done):
            return f"target objective {self.cfg.target} reached"
        n = self.cfg.max_not_improving
        if n and len(done) > n:
            best_before = min(t.value for t in done[:-n])
            if min(t.value for t in done[-n:]) >= best_before:
                return f"{n} trials without improving the best objective"
        return None

    def run(self) -> int:
        t0 = time.monotonic()
        running: dict[int, Running] = {}
        exhausted = False
        _log(f"study {self.cfg.name}: {self.cfg.strategy}, up to {self.cfg.max_jobs} trials, "
             f"{self.slots} at a time, early stopping {self.cfg.early_stopping}, "
             f"{self.cfg.runner_kind} runner; output {self.cfg.output}")
        with sigterm_as_interrupt():
            try:
                while True:
                    if self.stopping is None:
                        self.stopping = self.completion(t0)
                        if self.stopping:
                            _log(f"stopping: {self.stopping}")
                    while self.stopping is None and not exhausted and len(running) < self.slots:
                        trial = self.reserve()
                        if trial is None:
                            exhausted = True
                            break
                        r = self.start(trial)
                        running[r.number] = r
                    if self.stopping:
                        for r in list(running.values()):
                            self.finish(r, parse_metrics(r.job.log_text()), "Stopped",
                                        reason=f"stopped: {self.stopping}", stop=True)
                            running.pop(r.number)
                    if not running:
                        break
                    for r in list(running.values()):
                        if self.step(r):
                            running.pop(r.number)
                            write_results(self.study, self.cfg)
                    time.sleep(POLL_S)
            except KeyboardInterrupt:
                _log("interrupted: stopping the running trials")
                for r in list(running.values()):
                    self.finish(r, parse_metrics(r.job.log_text()), "Stopped",
                                reason="interrupted (queued again on resume)", stop=True,
                                interrupted=True)
                    running.pop(r.number)
                self.wrap_up(time.monotonic() - t0)
                print(f"smctl: interrupted; rerun the same command to resume {self.cfg.output}",
                      file=sys.stderr)
                return EXIT_INTERRUPTED
            finally:
                for r in running.values():  # an unexpected error: leave nothing running
                    r.job.stop()
        return self.wrap_up(time.monotonic() - t0)

    def wrap_up(self, wall: float) -> int:
        write_results(self.study, self.cfg)
        share = self.session_seconds / (wall * self.slots) if wall > 0 and self.session_trials \
            else float("nan")
        summary = {"wall_seconds": round(wall, 1), "slots": self.slots,
                   "trial_seconds": round(self.session_seconds, 1),
                   "trials_run": self.session_trials, "inside_trials_share": round(share, 3)}
        write_report(self.study, self.cfg, summary)
        print()
        ok = print_local_best(self.cfg.output, self.study)
        _log(f"study wall time {wall:.0f}s, {self.session_trials} trial(s) here; time inside "
             f"trials / (wall x {self.slots} slots) = {share:.0%}; report {self.cfg.output / 'report.html'}")
        if ok:
            return 0
        reasons = sorted({t.user_attrs.get("reason", "?")[:200] for t in self.study.get_trials(deepcopy=False)
                          if state_of(t) == "Failed" and not t.user_attrs.get("overflow")})
        if reasons:
            raise SmctlError(f"every trial failed: {'; '.join(reasons)[:600]}",
                             f"see the trials' train.log in {self.cfg.output}", EXIT_ERROR)
        return EXIT_ERROR


# -- results --------------------------------------------------------------------------------------
def listed_trials(study) -> list:
    return [t for t in study.get_trials(deepcopy=False)
            if not t.user_attrs.get("overflow") and "name" in t.user_attrs]


def write_results(study, cfg: LocalStudy) -> None:
    """trials.csv, best.json and study.json in OUTPUT (rewritten after every trial)."""
    out = cfg.output
    tuned = list(cfg.space)
    rows = []
    for t in listed_trials(study):
        rows.append({"trial": t.user_attrs["name"], "state": state_of(t),
                     "objective": "" if t.value is None or state_of(t) != "Completed" else t.value,
                     **{k: hp_string(t.params[k]) if k in t.params else "" for k in tuned},
                     "epochs_run": t.user_attrs.get("epochs_run", ""),
                     "seconds": t.user_attrs.get("seconds", "")})
    _atomic_write(out / "trials.csv", _csv(rows, ["trial", "state", "objective", *tuned,
                                                  "epochs_run", "seconds"]))
    best = best_trial(study)
    if best is not None:
        doc = {"trial": best.user_attrs["name"], "objective": best.value,
               "hyperparameters": best.user_attrs["hyperparameters"]}
        _atomic_write(out / "best.json", json.dumps(doc, indent=2) + "\n")
    meta = {"name": cfg.name, "storage": cfg.storage if cfg.storage.endswith(
        f"/{DEFAULT_STORAGE_FILE}") else redact(cfg.storage), "strategy": cfg.strategy,
            "objective": {"Type": OBJECTIVE_TYPE, "MetricName": OBJECTIVE_METRIC},
            "space": cfg.space, "static": cfg.static,
            "machine_hyperparameters": [k for k in MACHINE_HYPERPARAMETERS
                                        if k not in cfg.static and k not in cfg.space]}
    _atomic_write(out / STUDY_FILE, json.dumps(meta, indent=2) + "\n")


def _csv(rows: list[dict], header: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def best_trial(study):
    done = [t for t in listed_trials(study) if state_of(t) == "Completed"]
    return min(done, key=lambda t: t.value) if done else None


def _time(iso: str | None):
    return datetime.fromisoformat(iso) if iso else None


def print_local_best(output: Path, study=None, top: int | None = None) -> bool:
    """The ranked table of ``smctl best`` for a local study."""
    from smctl.tuning import print_ranked
    if study is None:
        study = load_study(output)
    space = study.user_attrs.get("space") or {}
    trials = listed_trials(study)
    ranked = sorted(trials, key=lambda t: (state_of(t) != "Completed",
                                           t.value if state_of(t) == "Completed" else 0, t.number))
    rows = [{"tuned": {k: hp_string(t.params[k]) for k in space if k in t.params},
             "objective": t.value if state_of(t) == "Completed" else None,
             "name": t.user_attrs["name"], "status": state_of(t),
             "start": _time(t.user_attrs.get("start")), "end": _time(t.user_attrs.get("end")),
             "elapsed": t.user_attrs.get("seconds")} for t in ranked[:top]]
    best = best_trial(study)
    return print_ranked(rows, list(space), OBJECTIVE_METRIC,
                        None if best is None else (best.user_attrs["name"], best.value,
                                                   visible_hyperparameters(best)),
                        str(output))


def visible_hyperparameters(t) -> dict[str, str]:
    return {k: v for k, v in t.user_attrs.get("hyperparameters", {}).items()
            if not schema.is_internal(k)}


def load_study(output: Path):
    path = Path(output) / STUDY_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{output} holds no local study ({STUDY_FILE} missing)",
                          "give the OUTPUT folder of smctl tune --local") from None
    storage = meta["storage"]
    if "***" in storage:
        storage = os.environ.get("SMCTL_TUNE_STORAGE", storage)
        if "***" in storage:
            raise ConfigError("the study's storage URL needs its password",
                              "set SMCTL_TUNE_STORAGE to the full --storage URL")
    optuna = _optuna()
    try:
        return optuna.load_study(study_name=meta["name"], storage=storage_for(storage))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"cannot open the study in {redact(storage)}: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]}") from None


def best_hyperparameters_for_training(output: Path) -> tuple[dict[str, str], str]:
    """``smctl train --from-tuning OUTPUT``: the local winner's hyperparameters (without the
    ones the tuner chose for this machine's CPU split) and its trial name."""
    try:
        best = json.loads((Path(output) / "best.json").read_text())
        meta = json.loads((Path(output) / STUDY_FILE).read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{output} holds no finished local study (best.json missing)",
                          "run smctl tune --local until a trial completes") from None
    machine = set(meta.get("machine_hyperparameters", MACHINE_HYPERPARAMETERS))
    hps = {k: str(v) for k, v in best["hyperparameters"].items()
           if k not in machine and not schema.is_internal(k)}
    return hps, best["trial"]


# -- report.html ----------------------------------------------------------------------------------
def _png(fig_or_ax) -> str:
    import matplotlib.pyplot as plt
    fig = getattr(fig_or_ax, "figure", None)
    if fig is None:  # an array of Axes (plot_slice with several parameters)
        fig = fig_or_ax.flat[0].figure
    fig.set_size_inches(max(6.0, fig.get_size_inches()[0]), 4.5)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(study) -> list[tuple[str, str | None, str]]:
    """(title, base64 PNG or None, note) per plot of the report."""
    import matplotlib
    matplotlib.use("Agg")
    optuna = _optuna()
    vis = optuna.visualization.matplotlib
    completed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    wanted = [("Optimisation history", vis.plot_optimization_history, 1),
              ("Objective against each hyperparameter", vis.plot_slice, 1),
              ("Validation loss per epoch, every trial", vis.plot_intermediate_values, 0),
              ("Hyperparameter importances", vis.plot_param_importances, 3)]
    out = []
    warnings.filterwarnings("ignore", module="matplotlib")  # e.g. one value: "singular xlims"
    warnings.filterwarnings("ignore", module="optuna")
    for title, fn, need in wanted:
        if len(completed) < need:
            out.append((title, None, f"needs {need} completed trials ({len(completed)} so far)"))
            continue
        try:
            out.append((title, _png(fn(study)), ""))
        except Exception as e:  # noqa: BLE001 - a plot Optuna cannot draw yet is a note
            out.append((title, None, f"not drawn: {type(e).__name__}: {e}"[:200]))
    return out


def write_report(study, cfg: LocalStudy, summary: dict) -> None:
    from html import escape
    trials = listed_trials(study)
    tuned = list(cfg.space)
    head = ["trial", "state", "objective", *tuned, "epochs_run", "seconds", "reason"]
    ranked = sorted(trials, key=lambda t: (state_of(t) != "Completed",
                                           t.value if state_of(t) == "Completed" else 0, t.number))
    body = []
    for t in ranked:
        cells = [t.user_attrs["name"], state_of(t),
                 f"{t.value:.4f}" if state_of(t) == "Completed" else "",
                 *(hp_string(t.params.get(k, "")) for k in tuned),
                 t.user_attrs.get("epochs_run", ""), t.user_attrs.get("seconds", ""),
                 t.user_attrs.get("reason", "")]
        body.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    figures = []
    for title, png, note in plots(study):
        figures.append(f"<h2>{escape(title)}</h2>" + (
            f'<img alt="{escape(title)}" src="data:image/png;base64,{png}">' if png
            else f"<p><em>{escape(note)}</em></p>"))
    html = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Local tuning: {escape(cfg.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left}}img{{max-width:100%}}</style>
</head><body>
<h1>Local tuning study {escape(cfg.name)}</h1>
<p>Strategy {escape(cfg.strategy)}, objective <code>{escape(OBJECTIVE_METRIC)}</code>
({OBJECTIVE_TYPE}), early stopping {escape(cfg.early_stopping)}, {len(trials)} trial(s),
{escape(cfg.runner_kind)} runner. This run: {summary['trials_run']} trial(s) in
{summary['wall_seconds']} s on {summary['slots']} slot(s); time inside trials / (wall time x
slots) = {summary['inside_trials_share']}.</p>
<p>Search space: <code>{escape(json.dumps(cfg.space))}</code></p>
<h2>Trials, best first</h2>
<table><tr>{''.join(f'<th>{escape(h)}</th>' for h in head)}</tr>
{''.join(body)}</table>
{''.join(figures)}
</body></html>
"""
    _atomic_write(cfg.output / "report.html", html)


# -- entry ----------------------------------------------------------------------------------------
def run_local(args, settings) -> int:
    cfg = resolve(args, settings)
    sampler, pruner = sampler_and_pruner(cfg)
    study = open_study(cfg, sampler, pruner)
    try:
        runner = make_runner(cfg.runner_kind, cfg.image)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return Tuner(cfg, study, runner).run()


def run_best_local(output: Path, top: int) -> int:
    return 0 if print_local_best(output, top=top) else 1

