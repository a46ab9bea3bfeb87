"""``smctl train``, ``status`` and ``logs``: CreateTrainingJob, progress, CloudWatch logs, rule results.

The request parts that a tuning job's training definition shares (image + metric definitions,
channels, output, resources, stopping condition, spot) are built here once and reused by
``tuning``.

    smctl train --hp epochs=10 --spot --wait
    smctl train --from-tuning imgclf-251125-101500 --wait
    smctl status imgclf-251125-120000
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from imgclf.metrics import METRIC_DEFINITIONS

from smctl import debugger, schema
from smctl.aws import Api
from smctl.config import Settings, load_state, save_state
from smctl.errors import ConfigError, SmctlError
from smctl.util import Poller, check_name, fmt_time, parse_pairs, print_table, unique_name

SPLITS = ("train", "valid", "test")
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL = ("Completed", "Failed", "Stopped")


# -- request parts shared with tuning ----------------------------------------------------------
def add_job_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training job")
    g.add_argument("--image-uri", help="image to run (default: image_uri setting, else the last "
                                       "build-push)")
    g.add_argument("--data", metavar="S3_URI",
                   help="dataset prefix holding train/ valid/ test/ (default: the last "
                        "'data upload', else s3://BUCKET/PREFIX/data/dogImages)")
    g.add_argument("--single-channel", action="store_true",
                   help="send the dataset as one 'training' channel instead of train/valid/test")
    g.add_argument("--pretrained", metavar="S3_URI",
                   help="optional 'pretrained' channel with a state_dict file (weights=PATH)")
    g.add_argument("--hp", action="append", metavar="KEY=VALUE",
                   help="hyperparameter (repeatable); overrides [hyperparameters] in the config")
    g.add_argument("--instance-type", dest="train_instance_type",
                   help="training instance type (default: ml.g4dn.xlarge)")
    g.add_argument("--instance-count", dest="train_instance_count", type=int,
                   help="instances per job (default: 1)")
    g.add_argument("--volume-gb", dest="train_volume_gb", type=int,
                   help="EBS volume per instance in GB (default: 50)")
    g.add_argument("--max-runtime", dest="max_runtime_s", type=int, metavar="SECONDS",
                   help="MaxRuntimeInSeconds (default: 86400)")
    g.add_argument("--spot", action="store_true",
                   help="managed spot training (MaxWaitTimeInSeconds = --max-wait)")
    g.add_argument("--max-wait", dest="max_wait_s", type=int, metavar="SECONDS",
                   help="spot: MaxWaitTimeInSeconds, >= --max-runtime (default: 172800)")


def resolve_image(settings: Settings) -> str:
    image = settings.image_uri or load_state().get("image_uri")
    if not image:
        raise ConfigError("no image URI", "run 'smctl build-push' first, or pass --image-uri / "
                                          "set SMCTL_IMAGE_URI")
    return image


def resolve_data(settings: Settings, data: str | None) -> str:
    return (data or load_state().get("data_uri") or settings.s3_uri("data", "dogImages")).rstrip("/")


def channels(data_uri: str, single: bool, pretrained: str | None) -> list[dict[str, Any]]:
    def channel(name: str, uri: str) -> dict[str, Any]:
        return {"ChannelName": name, "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}}}
    out = ([channel("training", data_uri + "/")] if single
           else [channel(s, f"{data_uri}/{s}/") for s in SPLITS])
    if pretrained:
        out.append(channel("pretrained", pretrained))
    return out


def static_hyperparameters(settings: Settings, hp_flags: list[str] | None,
                           *between: dict[str, str]) -> dict[str, str]:
    """Config ``[hyperparameters]`` < ``between`` (e.g. a tuning job's best) < ``--hp`` flags:
    canonical names, checked by train.py's parser (:mod:`smctl.schema`), as API strings."""
    return schema.static_hyperparameters(settings.hyperparameters, *between,
                                         parse_pairs(hp_flags, "--hp"))


def job_definition(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Fields common to CreateTrainingJob and a tuning job's TrainingJobDefinition."""
    role = settings.require("role_arn", "SageMaker execution role")
    stopping: dict[str, Any] = {"MaxRuntimeInSeconds": settings.max_runtime_s}
    spec: dict[str, Any] = {
        "AlgorithmSpecification": {"TrainingImage": resolve_image(settings),
                                   "TrainingInputMode": "File",
                                   "MetricDefinitions": [dict(m) for m in METRIC_DEFINITIONS]},
        "RoleArn": role,
        "InputDataConfig": channels(resolve_data(settings, args.data), args.single_channel,
                                    args.pretrained),
        "OutputDataConfig": {"S3OutputPath": settings.s3_uri("output")},
        "ResourceConfig": {"InstanceType": settings.train_instance_type,
                           "InstanceCount": settings.train_instance_count,
                           "VolumeSizeInGB": settings.train_volume_gb},
        "StoppingCondition": stopping,
    }
    if args.spot:
        if settings.max_wait_s < settings.max_runtime_s:
            raise ConfigError(f"--max-wait ({settings.max_wait_s}) is shorter than --max-runtime "
                              f"({settings.max_runtime_s})", "spot needs max-wait >= max-runtime")
        spec["EnableManagedSpotTraining"] = True
        stopping["MaxWaitTimeInSeconds"] = settings.max_wait_s
    return spec


def _unquote(value: str) -> str:
    # Jobs started by the Python SDK store JSON-quoted values ('"128"').
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def best_of_tuning(api: Api, ref: str) -> tuple[dict[str, str], str | None, str]:
    """The best hyperparameters of a SageMaker tuning job (NAME, or 'last' = the last one smctl
    started) or of a local study (an ``smctl tune --local`` OUTPUT folder holding best.json),
    the best job's name (None on a dry run) and what they came from."""
    from pathlib import Path
    if Path(ref, "best.json").is_file() or "/" in ref or ref.startswith("."):
        from smctl.local.tuning import best_hyperparameters_for_training
        hps, trial = best_hyperparameters_for_training(Path(ref))
        return hps, trial, f"the local study {ref}"
    tuning = load_state().get("tuning_job") if ref == "last" else ref
    if not tuning:
        raise ConfigError("no tuning job remembered", "pass --from-tuning NAME")
    hps, job = best_hyperparameters(api, tuning)
    return hps, (None if api.dry_run else job), tuning


def best_hyperparameters(api: Api, tuning_job: str) -> tuple[dict[str, str], str]:
    """Static + tuned hyperparameters of a tuning job's best training job, and its name."""
    desc = api.call("sagemaker", "describe_hyper_parameter_tuning_job",
                    HyperParameterTuningJobName=tuning_job)
    if desc is None:  # dry run: the request above is printed, values come from AWS at run time
        return {"<hyperparameters>": f"<from the best training job of {tuning_job}>"}, "<best>"
    best = desc.get("BestTrainingJob")
    if not best:
        raise SmctlError(f"tuning job {tuning_job} has no best training job yet "
                         f"(status {desc.get('HyperParameterTuningJobStatus')})",
                         f"wait for it: smctl best {tuning_job}")
    return best_from_description(desc)


def best_from_description(desc: dict[str, Any]) -> tuple[dict[str, str], str]:
    """Static + tuned hyperparameters of the best job in a DescribeHyperParameterTuningJob
    answer (unquoted, SageMaker-internal ones left out), and that job's name."""
    best = desc["BestTrainingJob"]
    static = (desc.get("TrainingJobDefinition") or {}).get("StaticHyperParameters") or {}
    hps = {k: _unquote(v) for k, v in static.items() if not schema.is_internal(k)}
    hps.update({k: _unquote(v) for k, v in best.get("TunedHyperParameters", {}).items()})
    return hps, best["TrainingJobName"]


# -- train ----------------------------------------------------------------------------------
def add_parser(sub, parents) -> None:
    p = sub.add_parser("train", parents=parents, help="start a training job (CreateTrainingJob)",
                       description="Start a SageMaker training job with the image: its own "
                                   "rules and profiler report run in the container; SageMaker "
                                   "Debugger only with --debugger; managed spot with "
                                   "checkpoints with --spot.")
    add_job_arguments(p)
    p.add_argument("--name", help="job name (default: BASE-YYMMDD-HHMMSS)")
    p.add_argument("--base-name", default="imgclf", help="prefix of generated names (default: imgclf)")
    p.add_argument("--from-tuning", metavar="TUNING_JOB|OUTPUT",
                   help="start from the best hyperparameters of this tuning job ('last' = the "
                        "last one smctl started) or of a local study's OUTPUT folder "
                        "(smctl tune --local); --hp still overrides")
    p.add_argument("--checkpoint-s3", metavar="S3_URI",
                   help="CheckpointConfig S3 URI (default with --spot: "
                        "s3://BUCKET/PREFIX/checkpoints/JOB)")
    d = p.add_argument_group(
        "SageMaker Debugger (opt-in)",
        "Off by default: the job's own rules (rules_report.json) and profiler report "
        "(profiler_report.html) run in the container either way. --debugger adds AWS's "
        "built-in rules, the tensor hook and the ProfilerReport rule (accounts with access to "
        "SageMaker Debugger only; also: debugger = true / SMCTL_DEBUGGER=true).")
    d.add_argument("--debugger", dest="debugger", action="store_const", const=True,
                   help="send DebugHookConfig, DebugRuleConfigurations, ProfilerConfig and the "
                        "ProfilerReport rule")
    d.add_argument("--no-debugger", dest="debugger", action="store_const", const=False,
                   help="none of them (the default; wins over debugger = true)")
    d.add_argument("--rules", help="with --debugger: comma list of built-in rules (default: all: "
                                   + ", ".join(debugger.BUILTIN_RULES) + ")")
    d.add_argument("--no-profiler", action="store_true",
                   help="with --debugger: no ProfilerConfig/ProfilerReport")
    d.add_argument("--rule-image", help="with --debugger: rule evaluator image URI (default: "
                                        "AWS's for the region)")
    d.add_argument("--rule-instance-type", dest="rule_instance_type",
                   help="with --debugger: instance type for rule evaluation (default: "
                        "SageMaker's choice)")
    add_follow_arguments(p)
    p.set_defaults(func=run_train)

    s = sub.add_parser("status", parents=parents, help="a training job's status, metrics and "
                                                       "rule evaluation results")
    s.add_argument("job", nargs="?", help="training job name (default: the last one started)")
    s.set_defaults(func=run_status)

    st = sub.add_parser("stop", parents=parents, help="stop a training job (or --tuning job)")
    st.add_argument("job", help="job name")
    st.add_argument("--tuning", action="store_true", help="the name is a tuning job")
    st.set_defaults(func=run_stop)

    lg = sub.add_parser("logs", parents=parents, help="follow a training job until it ends, "
                                                      "streaming its CloudWatch logs")
    lg.add_argument("job", nargs="?", help="training job name (default: the last one started)")
    add_follow_arguments(lg, wait_flag=False)
    lg.set_defaults(func=run_logs)


def add_follow_arguments(p: argparse.ArgumentParser, wait_flag: bool = True) -> None:
    if wait_flag:
        p.add_argument("--wait", action="store_true",
                       help="follow the job until it ends (status changes + CloudWatch logs)")
    p.add_argument("--no-logs", action="store_true", help="with --wait: status only, no log lines")
    p.add_argument("--poll-seconds", type=float, default=30.0,
                   help="seconds between status polls (default: 30)")


def build_training_request(settings: Settings, args: argparse.Namespace, api: Api) -> dict[str, Any]:
    name = check_name(args.name or unique_name(args.base_name), "training job")
    # Precedence: config [hyperparameters] < best of tuning < --hp flags.
    best: dict[str, str] = {}
    placeholder: dict[str, str] = {}
    if args.from_tuning:
        best, best_job, source = best_of_tuning(api, args.from_tuning)
        if best_job is None:  # dry run: the values come from AWS at run time
            best, placeholder = {}, best
        else:
            api.log(f"hyperparameters from {best_job} (best of {source})")
    hps = {**static_hyperparameters(settings, args.hp, best), **placeholder}

    req: dict[str, Any] = {"TrainingJobName": name, **job_definition(settings, args)}
    if hps:
        req["HyperParameters"] = hps
    if args.spot or args.checkpoint_s3:
        req["CheckpointConfig"] = {"S3Uri": args.checkpoint_s3 or settings.s3_uri("checkpoints", name),
                                   "LocalPath": CHECKPOINT_LOCAL_PATH}
    if settings.debugger:
        req.update(debugger.debugger_request(
            region=api.region, rules=debugger.parse_rules(args.rules),
            debug_s3=settings.s3_uri("debug-output"),
            profiler_s3=None if args.no_profiler else settings.s3_uri("profiler-output"),
            rule_image=args.rule_image or None, rule_instance_type=settings.rule_instance_type))
        if args.no_profiler:
            # Explicitly off (as the SageMaker SDK does): no Debugger system monitoring either.
            req["ProfilerConfig"] = {"DisableProfiler": True}
    else:
        given = [f for f, v in (("--rules", args.rules), ("--no-profiler", args.no_profiler),
                                ("--rule-image", args.rule_image)) if v]
        if given:
            raise ConfigError(f"{', '.join(given)} configure SageMaker Debugger, which is off",
                              "add --debugger (accounts with Debugger access), or drop them: "
                              "the job's own rules and profiler report run without it")
    return req


def run_train(args, settings: Settings, api: Api) -> int:
    req = build_training_request(settings, args, api)
    api.call("sagemaker", "create_training_job", **req)
    if api.dry_run:
        return 0
    name = req["TrainingJobName"]
    save_state(training_job=name)
    print(f"started training job {name}")
    print(f"  follow: smctl logs {name}    status/rules: smctl status {name}")
    if args.wait:
        return follow(api, name, Poller(args.poll_seconds), logs=not args.no_logs)
    return 0


# -- follow, logs, status ---------------------------------------------------------------------
class LogTail:
    """Prints new CloudWatch events of every stream ``JOB/...`` of a training job."""

    def __init__(self, api: Api, job: str, out=None):
        self.api, self.job, self.out = api, job, out or sys.stdout
        self.tokens: dict[str, str | None] = {}

    def poll(self) -> int:
        logs = self.api.client("logs")
        try:
            streams = logs.describe_log_streams(logGroupName=LOG_GROUP,
                                                logStreamNamePrefix=self.job + "/",
                                                orderBy="LogStreamName")["logStreams"]
        except logs.exceptions.ResourceNotFoundException:
            return 0  # the group/streams appear once the container starts
        printed = 0
        for stream in streams:
            sname = stream["logStreamName"]
            while True:
                kw: dict[str, Any] = {"logGroupName": LOG_GROUP, "logStreamName": sname,
                                      "startFromHead": True}
                if self.tokens.get(sname):
                    kw["nextToken"] = self.tokens[sname]
                resp = logs.get_log_events(**kw)
                for ev in resp.get("events", []):
                    host = sname.split("/", 1)[-1]
                    prefix = f"[{host}] " if len(streams) > 1 else ""
                    print(prefix + ev["message"].rstrip("\n"), file=self.out, flush=True)
                    printed += 1
                token = resp.get("nextForwardToken")
                if token == self.tokens.get(sname) or not resp.get("events"):
                    self.tokens[sname] = token
                    break
                self.tokens[sname] = token
        return printed


def follow(api: Api, job: str, poller: Poller, logs: bool = True) -> int:
    """Poll a training job until it ends; print status changes (and logs). Exit code 0 if Completed."""
    tail = LogTail(api, job) if logs else None
    last = None
    while True:
        desc = api.call("sagemaker", "describe_training_job", TrainingJobName=job)
        state = (desc["TrainingJobStatus"], desc.get("SecondaryStatus"))
        if state != last:
            msg = ""
            transitions = desc.get("SecondaryStatusTransitions") or []
            if transitions:
                msg = transitions[-1].get("StatusMessage", "")
            api.log(f"[{job}] {state[0]} / {state[1]}" + (f": {msg}" if msg else ""))
            last = state
        if tail:
            tail.poll()
        if state[0] in TERMINAL:
            if tail:
                tail.poll()  # drain what arrived after the last poll
            print_status(desc)
            return 0 if state[0] == "Completed" else 1
        poller.sleep()


def _job_or_last(job: str | None) -> str:
    job = job or load_state().get("training_job")
    if not job:
        raise ConfigError("no training job given", "pass the job name")
    return job


def run_logs(args, settings: Settings, api: Api) -> int:
    job = _job_or_last(args.job)
    if api.dry_run:
        api.call("sagemaker", "describe_training_job", TrainingJobName=job)
        api.call("logs", "describe_log_streams", logGroupName=LOG_GROUP,
                 logStreamNamePrefix=job + "/", orderBy="LogStreamName")
        return 0
    return follow(api, job, Poller(args.poll_seconds), logs=not args.no_logs)


def run_stop(args, settings: Settings, api: Api) -> int:
    if args.tuning:
        api.call("sagemaker", "stop_hyper_parameter_tuning_job",
                 HyperParameterTuningJobName=args.job)
    else:
        api.call("sagemaker", "stop_training_job", TrainingJobName=args.job)
    if not api.dry_run:
        print(f"stopping {'tuning' if args.tuning else 'training'} job {args.job} "
              "(spot/checkpointed jobs keep their last checkpoint in S3)")
    return 0


def run_status(args, settings: Settings, api: Api) -> int:
    job = _job_or_last(args.job)
    desc = api.call("sagemaker", "describe_training_job", TrainingJobName=job)
    if desc is None:
        return 0
    print_status(desc)
    return 0 if desc["TrainingJobStatus"] in ("Completed", "InProgress") else 1


def rule_rows(desc: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key in ("DebugRuleEvaluationStatuses", "ProfilerRuleEvaluationStatuses"):
        for r in desc.get(key) or []:
            rows.append([r.get("RuleConfigurationName", ""), r.get("RuleEvaluationStatus", ""),
                         " ".join(str(r.get("StatusDetails", "")).split())[:160]])
    return rows


def print_status(desc: dict[str, Any], out=None) -> None:
    out = out or sys.stdout
    res = desc.get("ResourceConfig") or {}
    lines = [
        ("job", desc.get("TrainingJobName")),
        ("status", f"{desc.get('TrainingJobStatus')} ({desc.get('SecondaryStatus')})"),
        ("failure", desc.get("FailureReason")),
        ("instances", f"{res.get('InstanceType')} x{res.get('InstanceCount')}"
                      + (" (spot)" if desc.get("EnableManagedSpotTraining") else "")),
        ("started", fmt_time(desc.get("TrainingStartTime"))),
        ("ended", fmt_time(desc.get("TrainingEndTime"))),
        ("billable", f"{desc['BillableTimeInSeconds']} s" if desc.get("BillableTimeInSeconds")
         else None),
        ("model", (desc.get("ModelArtifacts") or {}).get("S3ModelArtifacts")),
        ("checkpoints", (desc.get("CheckpointConfig") or {}).get("S3Uri")),
    ]
    if desc.get("EnableManagedSpotTraining") and desc.get("TrainingTimeInSeconds") \
            and desc.get("BillableTimeInSeconds"):
        saved = 100.0 * (1 - desc["BillableTimeInSeconds"] / desc["TrainingTimeInSeconds"])
        lines.append(("spot saving", f"{saved:.0f}%"))
    for key, value in lines:
        if value not in (None, "", "None x None"):
            print(f"{key:<12} {value}", file=out)
    metrics = desc.get("FinalMetricDataList") or []
    if metrics:
        print("metrics      " + "  ".join(f"{m['MetricName']}={m['Value']:.4g}" for m in metrics),
              file=out)
    rows = rule_rows(desc)
    if rows:
        print("", file=out)
        print_table(rows, ["rule", "evaluation", "details"], out=out)
        if desc.get("ProfilerConfig", {}).get("S3OutputPath") and desc.get("TrainingJobName"):
            base = desc["ProfilerConfig"]["S3OutputPath"].rstrip("/")
            print(f"\nprofiler report: {base}/{desc['TrainingJobName']}/rule-output/"
                  "ProfilerReport/profiler-output/profiler-report.html", file=out)
