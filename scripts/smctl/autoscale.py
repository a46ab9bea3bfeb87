"""``smctl autoscale``: Application Auto Scaling for an endpoint's variant.

RegisterScalableTarget on ``sagemaker:variant:DesiredInstanceCount`` of
``endpoint/NAME/variant/VARIANT``, then one target-tracking PutScalingPolicy:

- real-time, ``--target-invocations X``: ``SageMakerVariantInvocationsPerInstance`` (requests
  per instance per minute);
- real-time, ``--target-concurrency X``: ``SageMakerVariantConcurrentRequestsPerModelHighResolution``
  (requests in flight per model copy, sampled every 10 s: reacts faster to bursts);
- asynchronous, ``--target-backlog X``: the customized metric ``ApproximateBacklogSizePerInstance``
  with ``--min 0`` allowed. At zero instances that metric has no instances to divide by, so a
  step-scaling policy (+1 instance) fires on a CloudWatch alarm on ``HasBacklogWithoutCapacity``:
  that is what scales out from zero (AWS docs, "Autoscale an asynchronous endpoint").

Serverless endpoints scale by themselves (up to MaxConcurrency) and are refused here.
``smctl cleanup`` removes what this command made (see :func:`remove_scaling`).

    smctl autoscale --endpoint imgclf-dogs --min 1 --max 4 --target-invocations 200
    smctl autoscale --endpoint imgclf-async --min 0 --max 2 --target-backlog 5
"""

from __future__ import annotations

from typing import Any

from smctl.aws import Api
from smctl.config import Settings
from smctl.deploy import VARIANT, resolve_endpoint
from smctl.errors import ConfigError

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SERVICE = "application-autoscaling"
INVOCATIONS_METRIC = "SageMakerVariantInvocationsPerInstance"
CONCURRENCY_METRIC = "SageMakerVariantConcurrentRequestsPerModelHighResolution"
BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"
NO_CAPACITY_METRIC = "HasBacklogWithoutCapacity"
CW_NAMESPACE = "AWS/SageMaker"


def add_parser(sub, parents) -> None:
    p = sub.add_parser("autoscale", parents=parents,
                       help="scale an endpoint with Application Auto Scaling (target tracking)")
    p.add_argument("--endpoint", dest="endpoint_name", help="endpoint name (or endpoint_name setting)")
    p.add_argument("--variant", help="production variant to scale (default: the endpoint's first; "
                                     "smctl deploy makes one, AllTraffic)")
    p.add_argument("--min", dest="min_capacity", type=int,
                   help="fewest instances (required; 0 only for an asynchronous endpoint)")
    p.add_argument("--max", dest="max_capacity", type=int, help="most instances (required)")
    target = p.add_argument_group("target (exactly one)")
    target.add_argument("--target-invocations", type=float, metavar="X",
                        help=f"real-time: keep {INVOCATIONS_METRIC} (per minute) at X")
    target.add_argument("--target-concurrency", type=float, metavar="X",
                        help=f"real-time: keep {CONCURRENCY_METRIC} at X")
    target.add_argument("--target-backlog", type=float, metavar="X",
                        help=f"asynchronous: keep {BACKLOG_METRIC} at X (scales to and from zero)")
    p.add_argument("--scale-in-cooldown", type=int, default=300,
                   help="seconds after a scale-in before the next (default: 300)")
    p.add_argument("--scale-out-cooldown", type=int, default=60,
                   help="seconds after a scale-out before the next (default: 60)")
    p.set_defaults(func=run_autoscale)


def resource_id(endpoint: str, variant: str = VARIANT) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def alarm_name(endpoint: str) -> str:
    return f"{endpoint}-{NO_CAPACITY_METRIC}"


def check_flags(args) -> str:
    """Validate the numbers before any request; return the metric kind."""
    lo, hi = args.min_capacity, args.max_capacity
    if lo is None or hi is None:
        raise ConfigError("--min N and --max M are required", "the instance range to scale in")
    targets = [(k, v) for k, v in (("invocations", args.target_invocations),
                                   ("concurrency", args.target_concurrency),
                                   ("backlog", args.target_backlog)) if v is not None]
    if len(targets) != 1:
        raise ConfigError("give exactly one of --target-invocations, --target-concurrency, "
                          "--target-backlog", "real-time: invocations or concurrency; async: backlog")
    kind, value = targets[0]
    if lo < 0 or hi < 1:
        raise ConfigError(f"--min {lo} --max {hi}: need --min >= 0 and --max >= 1")
    if lo > hi:
        raise ConfigError(f"--min {lo} is above --max {hi}")
    if value <= 0:
        raise ConfigError(f"--target-{kind} must be > 0, got {value:g}")
    if lo == 0 and kind != "backlog":
        raise ConfigError("--min 0 needs an asynchronous endpoint (--target-backlog)",
                          "real-time endpoints keep at least one instance: use --min 1")
    for flag in ("scale_in_cooldown", "scale_out_cooldown"):
        if getattr(args, flag) < 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 0")
    return kind


def describe_variant(api: Api, endpoint: str, kind: str, name: str | None = None) -> str:
    """The variant to scale; refuses serverless endpoints and a metric that does not fit."""
    desc = api.call("sagemaker", "describe_endpoint", EndpointName=endpoint)
    if desc is None:  # dry run: the variant smctl deploy creates
        api.call("sagemaker", "describe_endpoint_config",
                 EndpointConfigName="<EndpointConfigName from DescribeEndpoint>")
        return name or VARIANT
    config = api.call("sagemaker", "describe_endpoint_config",
                      EndpointConfigName=desc["EndpointConfigName"])
    variants = [v for v in config.get("ProductionVariants") or []
                if name is None or v["VariantName"] == name]
    if not variants:
        raise ConfigError(f"endpoint {endpoint} has no production variant "
                          f"{name or 'to scale'}", "check --variant (aws sagemaker "
                          "describe-endpoint-config)")
    if variants[0].get("ServerlessConfig"):
        raise ConfigError(f"{endpoint} is a serverless endpoint",
                          "serverless endpoints scale by themselves up to MaxConcurrency: "
                          "redeploy with another --max-concurrency instead")
    is_async = bool(config.get("AsyncInferenceConfig"))
    if is_async and kind != "backlog":
        raise ConfigError(f"{endpoint} is an asynchronous endpoint",
                          "scale it on its queue: --target-backlog X (and --min 0 to scale to zero)")
    if kind == "backlog" and not is_async:
        raise ConfigError(f"{endpoint} is a real-time endpoint; --target-backlog is for "
                          "asynchronous ones", "use --target-invocations or --target-concurrency")
    return variants[0]["VariantName"]


def target_tracking(endpoint: str, kind: str, value: float, args) -> dict[str, Any]:
    conf: dict[str, Any] = {"TargetValue": float(value),
                            "ScaleInCooldown": args.scale_in_cooldown,
                            "ScaleOutCooldown": args.scale_out_cooldown}
    if kind == "backlog":
        conf["CustomizedMetricSpecification"] = {
            "MetricName": BACKLOG_METRIC, "Namespace": CW_NAMESPACE,
            "Dimensions": [{"Name": "EndpointName", "Value": endpoint}], "Statistic": "Average"}
    else:
        metric = INVOCATIONS_METRIC if kind == "invocations" else CONCURRENCY_METRIC
        conf["PredefinedMetricSpecification"] = {"PredefinedMetricType": metric}
    return conf


def scaling_requests(endpoint: str, variant: str, kind: str, args) -> dict[str, dict[str, Any]]:
    target = {"ServiceNamespace": NAMESPACE, "ResourceId": resource_id(endpoint, variant),
              "ScalableDimension": DIMENSION}
    value = {"invocations": args.target_invocations, "concurrency": args.target_concurrency,
             "backlog": args.target_backlog}[kind]
    reqs: dict[str, dict[str, Any]] = {
        "target": {**target, "MinCapacity": args.min_capacity, "MaxCapacity": args.max_capacity},
        "policy": {**target, "PolicyName": f"{endpoint}-{kind}",
                   "PolicyType": "TargetTrackingScaling",
                   "TargetTrackingScalingPolicyConfiguration": target_tracking(
                       endpoint, kind, value, args)},
    }
    if kind == "backlog":
        reqs["step"] = {**target, "PolicyName": f"{endpoint}-scale-out-from-zero",
                        "PolicyType": "StepScaling",
                        "StepScalingPolicyConfiguration": {
                            "AdjustmentType": "ChangeInCapacity",
                            "MetricAggregationType": "Average",
                            "Cooldown": args.scale_out_cooldown,
                            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0,
                                                 "ScalingAdjustment": 1}]}}
        reqs["alarm"] = {
            "AlarmName": alarm_name(endpoint),
            "AlarmDescription": f"queued requests and no instance on {endpoint}: add one",
            "Namespace": CW_NAMESPACE, "MetricName": NO_CAPACITY_METRIC,
            "Dimensions": [{"Name": "EndpointName", "Value": endpoint}],
            "Statistic": "Average", "Period": 60, "EvaluationPeriods": 2, "DatapointsToAlarm": 2,
            "Threshold": 1.0, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "missing",
            "AlarmActions": ["<PolicyARN of the step policy>"]}
    return reqs


def run_autoscale(args, settings: Settings, api: Api) -> int:
    kind = check_flags(args)
    endpoint = resolve_endpoint(settings, "endpoint to scale")
    variant = describe_variant(api, endpoint, kind, args.variant)
    reqs = scaling_requests(endpoint, variant, kind, args)
    api.call(SERVICE, "register_scalable_target", **reqs["target"])
    api.call(SERVICE, "put_scaling_policy", **reqs["policy"])
    if "step" in reqs:
        step = api.call(SERVICE, "put_scaling_policy", **reqs["step"])
        if step is not None:
            reqs["alarm"]["AlarmActions"] = [step["PolicyARN"]]
        api.call("cloudwatch", "put_metric_alarm", **reqs["alarm"])
    if api.dry_run:
        return 0
    target = reqs["target"]
    print(f"scaling {target['ResourceId']} between {target['MinCapacity']} and "
          f"{target['MaxCapacity']} instances on {kind} (target {reqs['policy']['TargetTrackingScalingPolicyConfiguration']['TargetValue']:g})"
          + (f"; alarm {reqs['alarm']['AlarmName']} scales out from zero" if "alarm" in reqs else ""))
    print(f"  undo: smctl cleanup --endpoint {endpoint} (removes scaling with the endpoint)")
    return 0


# -- cleanup's part ------------------------------------------------------------------------------
def scaling_plan(api: Api, endpoint: str, variants: list[str]) -> list[dict[str, Any]]:
    """The scalable targets of ``endpoint``'s variants, each with its policies' alarms to delete.

    Alarms of target-tracking policies belong to Application Auto Scaling and go with the
    policy; the alarm ``autoscale`` put on a step policy (HasBacklogWithoutCapacity) is ours.
    """
    ids = [resource_id(endpoint, v) for v in variants or [VARIANT]]
    page = api.call(SERVICE, "describe_scalable_targets", ServiceNamespace=NAMESPACE,
                    ResourceIds=ids, ScalableDimension=DIMENSION)
    if page is None:  # dry run
        api.call(SERVICE, "describe_scaling_policies", ServiceNamespace=NAMESPACE,
                 ResourceId=ids[0], ScalableDimension=DIMENSION)
        return [{"ResourceId": i, "alarms": [alarm_name(endpoint)]} for i in ids]
    targets = [{"ResourceId": t["ResourceId"]} for t in page.get("ScalableTargets", [])]
    for t in targets:
        pols = api.call(SERVICE, "describe_scaling_policies", ServiceNamespace=NAMESPACE,
                        ResourceId=t["ResourceId"], ScalableDimension=DIMENSION)
        t["alarms"] = [a["AlarmName"] for p in pols.get("ScalingPolicies", [])
                       if p.get("PolicyType") == "StepScaling" for a in p.get("Alarms", [])]
    return targets


def describe_plan(targets: list[dict[str, Any]]) -> list[str]:
    lines = []
    for t in targets:
        lines.append(f"scaling target {t['ResourceId']} and its policies")
        lines += [f"alarm {a}" for a in t["alarms"]]
    return lines


def remove_scaling(api: Api, targets: list[dict[str, Any]]) -> list[str]:
    """Delete our alarms, then deregister each target (which deletes its policies)."""
    done = []
    for t in targets:
        if t["alarms"]:
            api.call("cloudwatch", "delete_alarms", AlarmNames=t["alarms"])
            done += [f"alarm {a}" for a in t["alarms"]]
        api.call(SERVICE, "deregister_scalable_target", ServiceNamespace=NAMESPACE,
                 ResourceId=t["ResourceId"], ScalableDimension=DIMENSION)
        done.append(f"scaling target {t['ResourceId']}")
    return done
