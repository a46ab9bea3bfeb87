"""``smctl tune`` and ``smctl best``: CreateHyperParameterTuningJob, progress, the best job's table.

The objective and the metric regexes come from ``imgclf.metrics`` (the training code's single
regex module): "average test loss", minimised. Ranges default to the seed's search space (lr
continuous 0.001-0.01, batch size categorical 128/256/512) or come from ``[tune.ranges]``.

    smctl tune --max-jobs 4 --max-parallel-jobs 2 --spot --wait
    smctl best            # the last tuning job smctl started
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from imgclf.metrics import OBJECTIVE_METRIC, OBJECTIVE_TYPE

from smctl import schema
from smctl.aws import Api
from smctl.config import Settings, load_state, save_state
from smctl.errors import ConfigError
from smctl.training import (add_job_arguments, best_from_description, job_definition,
                            static_hyperparameters)
from smctl.util import Poller, check_name, fmt_time, hp_string, print_table, unique_name

STRATEGIES = ("Bayesian", "Random", "Hyperband", "Grid")
EARLY_STOPPING = ("Auto", "Off")
TERMINAL = ("Completed", "Failed", "Stopped")
MAX_NAME = 32  # HyperParameterTuningJobName limit


def add_parser(sub, parents) -> None:
    p = sub.add_parser("tune", parents=parents, help="start a hyperparameter tuning job",
                       description="CreateHyperParameterTuningJob over the image. Objective: "
                                   f"'{OBJECTIVE_METRIC}' ({OBJECTIVE_TYPE}). Ranges: [tune.ranges] "
                                   "in the config, else the seed's lr + batch-size ranges.")
    add_job_arguments(p)
    p.add_argument("--name", help=f"tuning job name, <= {MAX_NAME} chars (default: BASE-YYMMDD-HHMMSS)")
    p.add_argument("--base-name", default="imgclf", help="prefix of generated names (default: imgclf)")
    p.add_argument("--strategy", choices=STRATEGIES, help="search strategy (default: Bayesian)")
    p.add_argument("--max-jobs", type=int, help="MaxNumberOfTrainingJobs (default: 4)")
    p.add_argument("--max-parallel-jobs", type=int, help="MaxParallelTrainingJobs (default: 2)")
    p.add_argument("--early-stopping", choices=("Auto", "Off"),
                   help="TrainingJobEarlyStoppingType (default: Auto; Off for Hyperband)")
    p.add_argument("--checkpoints", action="store_true",
                   help="with --spot: also send a CheckpointConfig (s3://BUCKET/PREFIX/checkpoints/"
                        "TUNING_JOB). Off by default: parallel jobs would share that prefix.")
    p.add_argument("--wait", action="store_true", help="show progress until the tuning job ends")
    p.add_argument("--poll-seconds", type=float, default=60.0,
                   help="seconds between progress polls (default: 60)")
    p.set_defaults(func=run_tune)

    b = sub.add_parser("best", parents=parents,
                       help="a tuning job's progress and its training jobs ranked by objective")
    b.add_argument("tuning_job", nargs="?", help="tuning job name (default: the last one started)")
    b.add_argument("--top", type=int, default=10, help="rows in the table (default: 10)")
    b.set_defaults(func=run_best)


def parameter_ranges(space: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """A checked search space (:func:`smctl.schema.search_space`) -> the API's ParameterRanges."""
    out: dict[str, list[dict[str, Any]]] = {"ContinuousParameterRanges": [],
                                             "IntegerParameterRanges": [],
                                             "CategoricalParameterRanges": []}
    for name, spec in space.items():
        if spec["type"] == "categorical":
            out["CategoricalParameterRanges"].append({"Name": name, "Values": list(spec["values"])})
        else:
            key = ("ContinuousParameterRanges" if spec["type"] == "continuous"
                   else "IntegerParameterRanges")
            out[key].append({"Name": name, "MinValue": hp_string(spec["min"]),
                             "MaxValue": hp_string(spec["max"]), "ScalingType": spec["scaling"]})
    return {k: v for k, v in out.items() if v}


def resolve_study(settings: Settings, args: argparse.Namespace,
                  log=lambda msg: print(msg, file=sys.stderr)) -> dict[str, Any]:
    """What ``tune`` and ``tune --local`` share: strategy, limits, early stopping, the checked
    search space and the static hyperparameters (canonical names, tuned ones left out)."""
    cfg = settings.tune
    strategy = args.strategy or cfg.get("strategy", "Bayesian")
    if strategy not in STRATEGIES:
        raise ConfigError(f"tune strategy {strategy!r}", f"choose from {', '.join(STRATEGIES)}")
    max_jobs = int(args.max_jobs if args.max_jobs is not None else cfg.get("max_jobs", 4))
    parallel = int(args.max_parallel_jobs if args.max_parallel_jobs is not None
                   else cfg.get("max_parallel_jobs", 2))
    early = args.early_stopping or cfg.get("early_stopping",
                                           "Off" if strategy == "Hyperband" else "Auto")
    if early not in EARLY_STOPPING:
        raise ConfigError(f"tune early_stopping {early!r}", "use Auto or Off")
    if strategy == "Hyperband" and early != "Off":
        raise ConfigError("Hyperband has its own early stopping", "use --early-stopping Off")
    static = static_hyperparameters(settings, args.hp)
    space = schema.search_space(settings.tune_ranges(), static)
    if strategy == "Grid" and any(s["type"] != "categorical" for s in space.values()):
        raise ConfigError("Grid search takes categorical ranges only",
                          "make every [tune.ranges] entry categorical or pick another strategy")
    for name in sorted(set(static) & set(space)):
        log(f"smctl: static {name}={static[name]} dropped: {name} is tuned")
    static = {k: v for k, v in static.items() if k not in space}
    return {"strategy": strategy, "max_jobs": max_jobs, "parallel": parallel,
            "early_stopping": early, "space": space, "static": static}


def build_tuning_request(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    name = check_name(args.name or unique_name(args.base_name, MAX_NAME), "tuning job", MAX_NAME)
    study = resolve_study(settings, args)
    strategy, max_jobs, parallel = study["strategy"], study["max_jobs"], study["parallel"]
    definition = job_definition(settings, args)
    if study["static"]:
        definition["StaticHyperParameters"] = study["static"]
    if args.spot and args.checkpoints:
        definition["CheckpointConfig"] = {"S3Uri": settings.s3_uri("checkpoints", name),
                                          "LocalPath": "/opt/ml/checkpoints"}

    limits: dict[str, Any] = {"MaxParallelTrainingJobs": parallel}
    if strategy != "Grid":  # Grid runs every combination
        limits["MaxNumberOfTrainingJobs"] = max_jobs
    config: dict[str, Any] = {
        "Strategy": strategy,
        "HyperParameterTuningJobObjective": {"Type": OBJECTIVE_TYPE, "MetricName": OBJECTIVE_METRIC},
        "ResourceLimits": limits,
        "ParameterRanges": parameter_ranges(study["space"]),
        "TrainingJobEarlyStoppingType": study["early_stopping"],
    }
    return {"HyperParameterTuningJobName": name, "HyperParameterTuningJobConfig": config,
            "TrainingJobDefinition": definition}


def run_tune(args, settings: Settings, api: Api) -> int:
    req = build_tuning_request(settings, args)
    api.call("sagemaker", "create_hyper_parameter_tuning_job", **req)
    if api.dry_run:
        return 0
    name = req["HyperParameterTuningJobName"]
    save_state(tuning_job=name)
    print(f"started tuning job {name}")
    print(f"  progress/best: smctl best {name}    then: smctl train --from-tuning {name}")
    if args.wait:
        return wait(api, name, Poller(args.poll_seconds))
    return 0


def _progress_line(desc: dict[str, Any]) -> str:
    c = desc.get("TrainingJobStatusCounters") or {}
    line = (f"{desc['HyperParameterTuningJobStatus']}: {c.get('Completed', 0)} completed, "
            f"{c.get('InProgress', 0)} in progress, {c.get('Stopped', 0)} stopped, "
            f"{c.get('RetryableError', 0) + c.get('NonRetryableError', 0)} failed")
    best = desc.get("BestTrainingJob")
    if best and best.get("FinalHyperParameterTuningJobObjectiveMetric"):
        m = best["FinalHyperParameterTuningJobObjectiveMetric"]
        line += f"; best {m['MetricName']}={m['Value']:.4f} ({best['TrainingJobName']})"
    return line


def wait(api: Api, name: str, poller: Poller) -> int:
    last = None
    while True:
        desc = api.call("sagemaker", "describe_hyper_parameter_tuning_job",
                        HyperParameterTuningJobName=name)
        line = _progress_line(desc)
        if line != last:
            api.log(f"[{name}] {line}")
            last = line
        if desc["HyperParameterTuningJobStatus"] in TERMINAL:
            break
        poller.sleep()
    print_best(api, name, desc)
    if desc["HyperParameterTuningJobStatus"] != "Completed":
        reason = desc.get("FailureReason")
        api.log(f"tuning job {name} {desc['HyperParameterTuningJobStatus']}"
                + (f": {reason}" if reason else ""))
        return 1
    return 0


def run_best(args, settings: Settings, api: Api) -> int:
    name = args.tuning_job or load_state().get("tuning_job")
    if not name:
        raise ConfigError("no tuning job given", "pass the tuning job name")
    desc = api.call("sagemaker", "describe_hyper_parameter_tuning_job",
                    HyperParameterTuningJobName=name)
    if api.dry_run:
        _list_request(api, name, "Ascending", args.top)
        return 0
    print(_progress_line(desc))
    return 0 if print_best(api, name, desc, top=args.top) else 1


def _list_request(api: Api, name: str, order: str, top: int):
    return api.call("sagemaker", "list_training_jobs_for_hyper_parameter_tuning_job",
                    HyperParameterTuningJobName=name, SortBy="FinalObjectiveMetricValue",
                    SortOrder=order, MaxResults=max(1, min(top, 100)))


def print_best(api: Api, name: str, desc: dict[str, Any], top: int = 10) -> bool:
    """The seed's table: tuned hyperparameters, objective, job, status, times. False if no best."""
    objective = desc["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    order = "Ascending" if objective["Type"] == "Minimize" else "Descending"
    summaries = _list_request(api, name, order, top)["TrainingJobSummaries"]
    tuned = sorted({k for s in summaries for k in s.get("TunedHyperParameters", {})})
    rows = []
    for s in summaries:
        metric = s.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
        start, end = s.get("TrainingStartTime"), s.get("TrainingEndTime")
        elapsed = (end - start).total_seconds() if start and end else None
        rows.append([*(s.get("TunedHyperParameters", {}).get(k, "") for k in tuned),
                     f"{metric['Value']:.4f}" if "Value" in metric else "",
                     s["TrainingJobName"], s["TrainingJobStatus"], fmt_time(start), fmt_time(end),
                     f"{elapsed:.0f}" if elapsed is not None else ""])
    print()
    print_table(rows, [*tuned, "FinalObjectiveValue", "TrainingJobName", "TrainingJobStatus",
                       "TrainingStartTime", "TrainingEndTime", "TrainingElapsedTimeSeconds"])
    if not desc.get("BestTrainingJob"):
        print("\nno best training job yet")
        return False
    hps, best_job = best_from_description(desc)
    metric = desc["BestTrainingJob"].get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    print(f"\nbest training job: {best_job}  {metric.get('MetricName', objective['MetricName'])}"
          f"={metric.get('Value', float('nan')):.4f}")
    print_table(sorted(hps.items()), ["hyperparameter", "value"])
    print(f"\nnext: smctl train --from-tuning {name}")
    return True
