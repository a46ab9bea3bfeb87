"""``smctl deploy``: CreateModel, CreateEndpointConfig, then CreateEndpoint or UpdateEndpoint.

An existing endpoint is moved to the new model with UpdateEndpoint: SageMaker brings up the new
fleet, shifts traffic, then removes the old one (no downtime). GPU instances get
``InferenceAmiVersion`` because the image is a CUDA 12.8 build and SageMaker's default GPU
hosting AMI has an older driver (470 on g4dn/g5/p4d).

Three kinds of endpoint, one variant each:

- real-time (default): ``InstanceType`` x ``InitialInstanceCount``;
- ``--serverless``: a ``ServerlessConfig`` variant (memory, max/provisioned concurrency), no
  instance type and no AMI (serverless has no GPU), one model server worker;
- ``--async``: real-time instances plus ``AsyncInferenceConfig`` (results written to S3,
  optional SNS topics), scalable to zero with ``smctl autoscale``.

    smctl deploy --training-job imgclf-251125-120000 --endpoint imgclf-dogs --wait
    smctl deploy --model-data s3://bucket/imgclf/output/JOB/output/model.tar.gz --data-capture
    smctl deploy --serverless --memory-mb 4096 --max-concurrency 10 --endpoint imgclf-sls
    smctl deploy --async --async-output s3://bucket/imgclf/async-out --endpoint imgclf-async
"""

from __future__ import annotations

from typing import Any

from smctl.aws import Api
from smctl.config import Settings, load_state, save_state
from smctl.errors import ConfigError, SmctlError, is_not_found
from smctl.training import resolve_image
from smctl.util import Poller, check_name, parse_pairs, split_s3, timestamp

VARIANT = "AllTraffic"
#: Instance families with NVIDIA GPUs (ml.g4dn, ml.g5, ml.g6, ml.g6e, ml.p3, ml.p4d, ml.p5 ...).
GPU_FAMILIES = ("ml.g", "ml.p")

#: Serverless limits (ProductionVariantServerlessConfig): memory 1024-6144 MB in 1 GB steps,
#: MaxConcurrency 1-200, ProvisionedConcurrency 1-200 and <= MaxConcurrency.
SERVERLESS_MEMORY_MB = (1024, 6144)
SERVERLESS_MAX_CONCURRENCY = 200
#: Measured: the serving tree with one worker and a resnet18 (server, JVM, worker) holds about
#: 1.0 GB (PSS), so 1024 MB leaves no headroom; 2048 does (larger archs: ask for more).
DEFAULT_SERVERLESS_MEMORY_MB = 2048
DEFAULT_SERVERLESS_CONCURRENCY = 5
#: AsyncInferenceConfig ClientConfig.MaxConcurrentInvocationsPerInstance range.
ASYNC_MAX_CONCURRENT = 1000


def is_gpu_instance(instance_type: str) -> bool:
    return instance_type.startswith(GPU_FAMILIES)


def gpu_ami(instance_type: str, ami: str | None) -> str | None:
    """The AMI version to send: only for GPU instances, and not when set to ``none``."""
    if is_gpu_instance(instance_type) and ami and ami.lower() != "none":
        return ami
    return None


def resolve_endpoint(settings: Settings, what: str) -> str:
    """``--endpoint`` / endpoint_name, else the endpoint the last ``deploy`` made."""
    endpoint = settings.endpoint_name or load_state().get("endpoint")
    if not endpoint:
        settings.require("endpoint_name", what)
    return endpoint


def add_parser(sub, parents) -> None:
    p = sub.add_parser("deploy", parents=parents,
                       help="deploy a model to a real-time, serverless or async endpoint "
                            "(create or update)")
    add_model_arguments(p, "serve", "(default: the last job 'smctl train' started)")
    p.add_argument("--endpoint", dest="endpoint_name", help="endpoint name (or endpoint_name setting)")
    p.add_argument("--instance-type", dest="serve_instance_type",
                   help="hosting instance type (default: ml.g4dn.xlarge)")
    p.add_argument("--instance-count", dest="serve_instance_count", type=int,
                   help="initial instance count (default: 1)")
    p.add_argument("--inference-ami-version", dest="inference_ami_version",
                   help="InferenceAmiVersion for GPU instances (default: "
                        "al2-ami-sagemaker-inference-gpu-3-1, NVIDIA driver 550); 'none' to omit")
    p.add_argument("--data-capture", action="store_true",
                   help="capture requests/responses to s3://BUCKET/PREFIX/data-capture/ENDPOINT")
    p.add_argument("--capture-percent", type=int, default=100,
                   help="with --data-capture: sampling percentage (default: 100)")
    sls = p.add_argument_group("serverless (--serverless)")
    sls.add_argument("--serverless", action="store_true",
                     help="a serverless endpoint: no instances, billed per request (CPU only)")
    sls.add_argument("--memory-mb", type=int,
                     help=f"memory, 1024-6144 in steps of 1024 (default: "
                          f"{DEFAULT_SERVERLESS_MEMORY_MB})")
    sls.add_argument("--max-concurrency", type=int,
                     help=f"MaxConcurrency, 1-{SERVERLESS_MAX_CONCURRENCY} "
                          f"(default: {DEFAULT_SERVERLESS_CONCURRENCY})")
    sls.add_argument("--provisioned-concurrency", type=int,
                     help="ProvisionedConcurrency (kept warm, billed while idle), "
                          "<= --max-concurrency (default: none)")
    asy = p.add_argument_group("asynchronous (--async)")
    asy.add_argument("--async", dest="async_mode", action="store_true",
                     help="an asynchronous endpoint: requests queue, results go to S3")
    asy.add_argument("--async-output", metavar="S3_URI", help="S3OutputPath for results (required)")
    asy.add_argument("--async-failure", metavar="S3_URI",
                     help="S3FailurePath for errors (default: ASYNC_OUTPUT/failures)")
    asy.add_argument("--sns-success", metavar="ARN", help="SNS topic told of each result")
    asy.add_argument("--sns-error", metavar="ARN", help="SNS topic told of each failure")
    asy.add_argument("--max-concurrent-invocations", type=int,
                     help=f"MaxConcurrentInvocationsPerInstance, 1-{ASYNC_MAX_CONCURRENT} "
                          "(default: SageMaker picks)")
    p.add_argument("--update", action="store_true",
                   help="with --dry-run: show the UpdateEndpoint path (a real run detects it)")
    p.add_argument("--wait", action="store_true", help="wait until the endpoint is InService")
    p.add_argument("--poll-seconds", type=float, default=30.0,
                   help="seconds between status polls (default: 30)")
    p.set_defaults(func=run_deploy)


def add_model_arguments(p, verb: str, default_job: str) -> None:
    """The model source and container flags shared by ``deploy`` and ``batch``."""
    p.add_argument("--model-data", metavar="S3_URI", help=f"model.tar.gz to {verb}")
    p.add_argument("--training-job", help=f"{verb} this training job's model {default_job}")
    p.add_argument("--image-uri", help="serving image (default: the image_uri setting, else the "
                                       "training job's image, else the last build-push)")
    p.add_argument("--env", action="append", metavar="KEY=VALUE",
                   help="container environment variable (repeatable)")


def check_model_flags(args) -> None:
    if args.model_data and args.training_job:
        raise ConfigError("--model-data and --training-job both given", "pass one of them")
    if args.model_data:
        split_s3(args.model_data)


def model_source(args, api: Api, use_last_job: bool = True) -> tuple[str, str | None]:
    """(ModelDataUrl, the image the model was trained with if known)."""
    check_model_flags(args)
    if args.model_data:
        return args.model_data, None
    job = args.training_job or (load_state().get("training_job") if use_last_job else None)
    if not job:
        raise ConfigError("no model given", "pass --model-data S3_URI or --training-job NAME")
    desc = api.call("sagemaker", "describe_training_job", TrainingJobName=job)
    if desc is None:  # dry run
        return f"<ModelArtifacts.S3ModelArtifacts of {job}>", None
    if desc["TrainingJobStatus"] != "Completed":
        raise SmctlError(f"training job {job} is {desc['TrainingJobStatus']}, not Completed",
                         f"see 'smctl status {job}'")
    image = (desc.get("AlgorithmSpecification") or {}).get("TrainingImage")
    return desc["ModelArtifacts"]["S3ModelArtifacts"], image


def create_model_request(settings: Settings, model_name: str, model_data: str,
                         trained_image: str | None, env: dict[str, str]) -> dict[str, Any]:
    """The CreateModel request for deploy and batch: one container, the image and the model."""
    role = settings.require("role_arn", "SageMaker execution role")
    # Serve with the image that trained the model unless an image is given explicitly.
    explicit = settings.sources.get("image_uri", "default") != "default"
    image = settings.image_uri if explicit else (trained_image or resolve_image(settings))
    container: dict[str, Any] = {"Image": image, "ModelDataUrl": model_data}
    if env:
        container["Environment"] = env
    return {"ModelName": model_name, "ExecutionRoleArn": role, "PrimaryContainer": container}


def _given(settings: Settings, name: str) -> bool:
    return settings.sources.get(name) == "flag"


def check_mode_flags(settings: Settings, args) -> None:
    """Refuse flag combinations SageMaker would refuse (or silently ignore), before any request."""
    sls_flags = [f for f, v in (("--memory-mb", args.memory_mb),
                                ("--max-concurrency", args.max_concurrency),
                                ("--provisioned-concurrency", args.provisioned_concurrency))
                 if v is not None]
    async_flags = [f for f, v in (("--async-output", args.async_output),
                                  ("--async-failure", args.async_failure),
                                  ("--sns-success", args.sns_success),
                                  ("--sns-error", args.sns_error),
                                  ("--max-concurrent-invocations",
                                   args.max_concurrent_invocations)) if v is not None]
    if args.serverless and args.async_mode:
        raise ConfigError("--serverless and --async both given",
                          "SageMaker has no asynchronous serverless endpoints: pick one")
    if sls_flags and not args.serverless:
        raise ConfigError(f"{sls_flags[0]} needs --serverless")
    if async_flags and not args.async_mode:
        raise ConfigError(f"{async_flags[0]} needs --async")
    if args.serverless:
        for name, flag in (("serve_instance_type", "--instance-type"),
                           ("serve_instance_count", "--instance-count"),
                           ("inference_ami_version", "--inference-ami-version")):
            if _given(settings, name):
                raise ConfigError(f"{flag} does not apply to --serverless",
                                  "serverless endpoints have no instances (and no GPU): "
                                  "size them with --memory-mb")
        if args.data_capture:
            raise ConfigError("--data-capture does not apply to --serverless",
                              "SageMaker serverless endpoints do not support data capture")
        mem = args.memory_mb if args.memory_mb is not None else DEFAULT_SERVERLESS_MEMORY_MB
        lo, hi = SERVERLESS_MEMORY_MB
        if not lo <= mem <= hi or mem % 1024:
            raise ConfigError(f"--memory-mb {mem} is not one of 1024, 2048, ... 6144",
                              "serverless memory goes in 1024 MB steps from 1024 to 6144")
        conc = args.max_concurrency if args.max_concurrency is not None \
            else DEFAULT_SERVERLESS_CONCURRENCY
        if not 1 <= conc <= SERVERLESS_MAX_CONCURRENCY:
            raise ConfigError(f"--max-concurrency {conc} is out of range",
                              f"use 1 to {SERVERLESS_MAX_CONCURRENCY}")
        prov = args.provisioned_concurrency
        if prov is not None and not 1 <= prov <= conc:
            raise ConfigError(f"--provisioned-concurrency {prov} is out of range",
                              f"use 1 to the max concurrency ({conc})")
    if args.async_mode:
        if not args.async_output:
            raise ConfigError("--async needs --async-output S3_URI",
                              "results of asynchronous requests are written there")
        for flag, uri in (("--async-output", args.async_output),
                          ("--async-failure", args.async_failure)):
            if uri is not None:
                split_s3(uri)
        for flag, arn in (("--sns-success", args.sns_success), ("--sns-error", args.sns_error)):
            if arn is not None and not (arn.startswith("arn:") and ":sns:" in arn):
                raise ConfigError(f"{flag} {arn!r} is not an SNS topic ARN",
                                  "use arn:aws:sns:REGION:ACCOUNT:TOPIC")
        n = args.max_concurrent_invocations
        if n is not None and not 1 <= n <= ASYNC_MAX_CONCURRENT:
            raise ConfigError(f"--max-concurrent-invocations {n} is out of range",
                              f"use 1 to {ASYNC_MAX_CONCURRENT}")


def production_variant(settings: Settings, args, model_name: str) -> dict[str, Any]:
    variant: dict[str, Any] = {"VariantName": VARIANT, "ModelName": model_name,
                               "InitialVariantWeight": 1.0}
    if args.serverless:
        sls: dict[str, Any] = {
            "MemorySizeInMB": args.memory_mb or DEFAULT_SERVERLESS_MEMORY_MB,
            "MaxConcurrency": args.max_concurrency or DEFAULT_SERVERLESS_CONCURRENCY}
        if args.provisioned_concurrency is not None:
            sls["ProvisionedConcurrency"] = args.provisioned_concurrency
        variant["ServerlessConfig"] = sls
        return variant
    variant["InstanceType"] = settings.serve_instance_type
    variant["InitialInstanceCount"] = settings.serve_instance_count
    ami = gpu_ami(settings.serve_instance_type, settings.inference_ami_version)
    if ami:
        variant["InferenceAmiVersion"] = ami
    return variant


def async_config(args) -> dict[str, Any]:
    output = args.async_output.rstrip("/")
    out: dict[str, Any] = {"S3OutputPath": output,
                           "S3FailurePath": (args.async_failure or f"{output}/failures").rstrip("/")}
    topics = {k: v for k, v in (("SuccessTopic", args.sns_success),
                                ("ErrorTopic", args.sns_error)) if v}
    if topics:
        out["NotificationConfig"] = topics
    config: dict[str, Any] = {"OutputConfig": out}
    if args.max_concurrent_invocations is not None:
        config["ClientConfig"] = {
            "MaxConcurrentInvocationsPerInstance": args.max_concurrent_invocations}
    return config


def build_requests(settings: Settings, args, api: Api, model_data: str,
                   trained_image: str | None = None) -> dict[str, dict[str, Any]]:
    endpoint = check_name(settings.require("endpoint_name", "endpoint to create or update"),
                          "endpoint")
    stamp = timestamp()
    model_name = check_name(f"{endpoint[:49]}-{stamp}", "model")
    env = parse_pairs(args.env, "--env")
    if args.serverless:
        # One model copy: serverless memory is small and requests arrive one per instance.
        env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", **env}
    model = create_model_request(settings, model_name, model_data, trained_image, env)
    config: dict[str, Any] = {"EndpointConfigName": model_name,
                              "ProductionVariants": [production_variant(settings, args, model_name)]}
    if args.async_mode:
        config["AsyncInferenceConfig"] = async_config(args)
    if args.data_capture:
        config["DataCaptureConfig"] = {
            "EnableCapture": True,
            "InitialSamplingPercentage": args.capture_percent,
            "DestinationS3Uri": settings.s3_uri("data-capture", endpoint),
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
        }
    return {
        "model": model,
        "config": config,
        "endpoint": {"EndpointName": endpoint, "EndpointConfigName": model_name},
    }


def endpoint_exists(api: Api, name: str) -> bool:
    from botocore.exceptions import ClientError
    try:
        api.client("sagemaker").describe_endpoint(EndpointName=name)
        return True
    except ClientError as e:
        if is_not_found(e):
            return False
        raise


def endpoint_kind(args) -> str:
    return "serverless" if args.serverless else "asynchronous" if args.async_mode else "real-time"


def run_deploy(args, settings: Settings, api: Api) -> int:
    check_mode_flags(settings, args)
    model_data, trained_image = model_source(args, api)
    reqs = build_requests(settings, args, api, model_data, trained_image)
    endpoint = reqs["endpoint"]["EndpointName"]
    if api.dry_run:
        exists = args.update
        api.call("sagemaker", "describe_endpoint", EndpointName=endpoint)
    else:
        exists = endpoint_exists(api, endpoint)
    api.call("sagemaker", "create_model", **reqs["model"])
    api.call("sagemaker", "create_endpoint_config", **reqs["config"])
    if exists:
        api.call("sagemaker", "update_endpoint", **reqs["endpoint"])
    else:
        api.call("sagemaker", "create_endpoint", **reqs["endpoint"])
    if api.dry_run:
        return 0
    save_state(endpoint=endpoint)
    verb = "updating" if exists else "creating"
    print(f"{verb} endpoint {endpoint} ({endpoint_kind(args)}) with model "
          f"{reqs['model']['ModelName']}"
          + (" (old fleet keeps serving until the new one is InService)" if exists else ""))
    if args.wait:
        return wait_in_service(api, endpoint, Poller(args.poll_seconds),
                               expected_config=reqs["endpoint"]["EndpointConfigName"])
    print(f"  wait/check: smctl deploy ... --wait, or 'aws sagemaker describe-endpoint "
          f"--endpoint-name {endpoint}'")
    return 0


def wait_in_service(api: Api, endpoint: str, poller: Poller,
                    expected_config: str | None = None) -> int:
    last = None
    while True:
        desc = api.call("sagemaker", "describe_endpoint", EndpointName=endpoint)
        status = desc["EndpointStatus"]
        if status != last:
            api.log(f"[{endpoint}] {status}")
            last = status
        if status == "InService":
            if expected_config and desc.get("EndpointConfigName") != expected_config:
                # A failed UpdateEndpoint rolls back: InService again, on the old config.
                raise SmctlError(f"update of {endpoint} failed and was rolled back: "
                                 f"{desc.get('FailureReason', 'no reason given')}",
                                 f"see CloudWatch logs /aws/sagemaker/Endpoints/{endpoint}")
            print(f"endpoint {endpoint} is InService: smctl invoke IMAGE --endpoint {endpoint}"
                  + (" --async" if desc.get("AsyncInferenceConfig") else ""))
            return 0
        if status in ("Failed", "OutOfService", "Deleting"):
            raise SmctlError(f"endpoint {endpoint} is {status}: {desc.get('FailureReason', '')}".strip(),
                             f"see CloudWatch logs /aws/sagemaker/Endpoints/{endpoint}")
        poller.sleep()
