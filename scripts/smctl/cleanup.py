"""``smctl cleanup``: delete an endpoint, its endpoint config, its model(s) and its autoscaling;
asks unless --yes.

An endpoint bills by the hour while it exists, whether it answers requests or not. Scaling
targets (and the scale-out-from-zero alarm ``smctl autoscale`` puts on asynchronous endpoints)
are removed first: a target left behind would point at an endpoint that no longer exists.

    smctl cleanup --endpoint imgclf-dogs --yes
"""

from __future__ import annotations

import sys

from smctl import autoscale
from smctl.aws import Api
from smctl.deploy import resolve_endpoint
from smctl.config import Settings
from smctl.errors import SmctlError, is_not_found

_DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")


def add_parser(sub, parents) -> None:
    p = sub.add_parser("cleanup", parents=parents,
                       help="delete an endpoint, its endpoint config, model(s) and autoscaling")
    p.add_argument("--endpoint", dest="endpoint_name", help="endpoint name (or endpoint_name setting)")
    p.add_argument("--keep-model", action="store_true", help="delete endpoint + config only")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=run_cleanup)


def confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _dry_run(args, api: Api, endpoint: str) -> int:
    config = "<EndpointConfigName from DescribeEndpoint>"
    api.call("sagemaker", "describe_endpoint", EndpointName=endpoint)
    api.call("sagemaker", "describe_endpoint_config", EndpointConfigName=config)
    autoscale.remove_scaling(api, autoscale.scaling_plan(api, endpoint, [autoscale.VARIANT]))
    api.call("sagemaker", "delete_endpoint", EndpointName=endpoint)
    api.call("sagemaker", "delete_endpoint_config", EndpointConfigName=config)
    if not args.keep_model:
        api.call("sagemaker", "delete_model", ModelName="<ModelName of each ProductionVariant>")
    return 0


def run_cleanup(args, settings: Settings, api: Api) -> int:
    endpoint = resolve_endpoint(settings, "endpoint to delete")
    if api.dry_run:
        return _dry_run(args, api, endpoint)

    from botocore.exceptions import ClientError
    try:
        desc = api.call("sagemaker", "describe_endpoint", EndpointName=endpoint)
    except ClientError as e:
        if is_not_found(e):
            raise SmctlError(f"endpoint {endpoint} does not exist in {api.region}",
                             "nothing to delete; check --endpoint and --region") from None
        raise
    config_name = desc["EndpointConfigName"]
    models: list[str] = []
    variants = [v["VariantName"] for v in desc.get("ProductionVariants", [])]
    try:
        config = api.call("sagemaker", "describe_endpoint_config", EndpointConfigName=config_name)
        models = [v["ModelName"] for v in config.get("ProductionVariants", [])]
        variants = variants or [v["VariantName"] for v in config.get("ProductionVariants", [])]
    except ClientError as e:
        if not is_not_found(e):
            raise
    try:
        scaling = autoscale.scaling_plan(api, endpoint, variants)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in _DENIED:
            raise
        api.log("warning: cannot read Application Auto Scaling targets (access denied): any "
                "scaling target of this endpoint is left in place")
        scaling = []
    plan = [f"endpoint {endpoint} ({desc.get('EndpointStatus')})", f"endpoint config {config_name}"]
    if not args.keep_model:
        plan += [f"model {m}" for m in models]
    plan += autoscale.describe_plan(scaling)
    print("will delete:\n  " + "\n  ".join(plan))
    if not args.yes and not confirm("delete these?"):
        print("nothing deleted (pass --yes to skip this question)")
        return 1

    for what in autoscale.remove_scaling(api, scaling):
        print(f"deleted {what}")
    api.call("sagemaker", "delete_endpoint", EndpointName=endpoint)
    print(f"deleted endpoint {endpoint}")
    for call, kw, what in ([("delete_endpoint_config", {"EndpointConfigName": config_name},
                             f"endpoint config {config_name}")]
                           + ([] if args.keep_model else
                              [("delete_model", {"ModelName": m}, f"model {m}") for m in models])):
        try:
            api.call("sagemaker", call, **kw)
            print(f"deleted {what}")
        except ClientError as e:
            if not is_not_found(e):
                raise
            print(f"{what} was already gone")
    return 0
