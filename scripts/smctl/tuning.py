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
from pathlib import Path
from typing import Any

from imgclf.metrics import OBJECTIVE_METRIC, OBJECTIVE_TYPE

from smctl import schema
from smctl.local.tuning import add_arguments as local_arguments
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
    local_arguments(p)
    p.set_defaults(func=run_tune)

    b = sub.add_parser("best", parents=parents,
                       help="a tuning job's progress and its training jobs ranked by objective")
    b.add_argument("tuning_job", nargs="?", help="tuning job name (default: the last one started), "
                                                 "or a local study's OUTPUT folder")
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
    # AMT's completion criteria and seed: the same flags as --local
    criteria: dict[str, Any] = {}
    if args.target_objective is not None:
        criteria["TargetObjectiveMetricValue"] = args.target_objective
    if args.max_jobs_not_improving is not None:
        criteria["BestObjectiveNotImproving"] = {
            "MaxNumberOfTrainingJobsNotImproving": args.max_jobs_not_improving}
    if criteria:
        config["TuningJobCompletionCriteria"] = criteria
    if args.seed is not None:
        config["RandomSeed"] = args.seed
    return {"HyperParameterTuningJobName": name, "HyperParameterTuningJobConfig": config,
            "TrainingJobDefinition": definition}


def run_tune(args, settings: Settings, api: Api) -> int:
    local_only = [f for f, v in (("--output", args.output), ("--storage", args.storage),
                                 ("--runner", args.runner), ("--image", args.image)) if v]
    aws_only = [f for f, v in (("--spot", args.spot), ("--checkpoints", args.checkpoints),
                               ("--pretrained", args.pretrained),
                               ("--single-channel", args.single_channel)) if v]
    if local_only and not args.local:
        raise ConfigError(f"{', '.join(local_only)} only apply to a local study", "add --local")
    if aws_only and args.local:
        raise ConfigError(f"{', '.join(aws_only)} only apply to a SageMaker tuning job",
                          "drop them for --local")
    if args.local:
        from smctl.local import tuning as local  # Optuna is imported only when trials run
        if api.dry_run:  # every check, then the plan; no trial starts
            plan = local.resolve(args, settings)
            api.record("tune-local", name=plan.name, output=plan.output, storage=local.redact(plan.storage),
                       strategy=plan.strategy, max_jobs=plan.max_jobs, parallel=plan.parallel,
                       early_stopping=plan.early_stopping, space=plan.space, static=plan.static,
                       runner=plan.runner_kind, image=plan.image)
            return 0
        return local.run_local(args, settings)
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
    if args.tuning_job and Path(args.tuning_job).is_dir():  # a local study's OUTPUT folder
        from smctl.local.tuning import run_best_local
        return run_best_local(Path(args.tuning_job), args.top)
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


RANKED_COLUMNS = ["FinalObjectiveValue", "TrainingJobName", "TrainingJobStatus",
                  "TrainingStartTime", "TrainingEndTime", "TrainingElapsedTimeSeconds"]


def print_ranked(rows: list[dict[str, Any]], tuned: list[str], metric: str,
                 best: tuple[str, float | None, dict[str, str]] | None, ref: str) -> bool:
    """The seed's table, for a SageMaker tuning job and a local study alike: one row per
    training job/trial (``tuned``, ``objective``, ``name``, ``status``, ``start``, ``end``,
    ``elapsed``), then the best one's hyperparameters. False if there is no best yet."""
    table = []
    for r in rows:
        table.append([*(r["tuned"].get(k, "") for k in tuned),
                      f"{r['objective']:.4f}" if r.get("objective") is not None else "",
                      r["name"], r["status"], fmt_time(r.get("start")), fmt_time(r.get("end")),
                      f"{r['elapsed']:.0f}" if r.get("elapsed") is not None else ""])
    print()
    print_table(table, [*tuned, *RANKED_COLUMNS])
    if best is None:
        print("\nno best training job yet")
        return False
    name, value, hps = best
    print(f"\nbest training job: {name}  {metric}="
          f"{value if value is not None else float('nan'):.4f}")
    print_table(sorted(hps.items()), ["hyperparameter", "value"])
    print(f"\nnext: smctl train --from-tuning {ref}")
    return True


def print_best(api: Api, name: str, desc: dict[str, Any], top: int = 10) -> bool:
    """The ranked table of a SageMaker tuning job. False if no best job yet."""
    objective = desc["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    order = "Ascending" if objective["Type"] == "Minimize" else "Descending"
    summaries = _list_request(api, name, order, top)["TrainingJobSummaries"]
    tuned = sorted({k for s in summaries for k in s.get("TunedHyperParameters", {})})
    rows = []
    for s in summaries:
        metric = s.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
        start, end = s.get("TrainingStartTime"), s.get("TrainingEndTime")
        rows.append({"tuned": s.get("TunedHyperParameters", {}), "objective": metric.get("Value"),
                     "name": s["TrainingJobName"], "status": s["TrainingJobStatus"],
                     "start": start, "end": end,
                     "elapsed": (end - start).total_seconds() if start and end else None})
    best = None
    if desc.get("BestTrainingJob"):
        hps, best_job = best_from_description(desc)
        metric = desc["BestTrainingJob"].get("FinalHyperParameterTuningJobObjectiveMetric") or {}
        best = (best_job, metric.get("Value"), hps)
        objective = {**objective, "MetricName": metric.get("MetricName", objective["MetricName"])}
    return print_ranked(rows, tuned, objective["MetricName"], best, name)
