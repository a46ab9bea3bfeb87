"""``smctl deploy``: CreateModel, CreateEndpointConfig, then CreateEndpoint or UpdateEndpoint.

An existing endpoint is moved to the new model with UpdateEndpoint: SageMaker brings up the new
fleet, shifts traffic, then removes the old one (no downtime). GPU instances get
``InferenceAmiVersion`` because the image is a CUDA 12.8 build and SageMaker's default GPU
hosting AMI has an older driver (470 on g4dn/g5/p4d).

    smctl deploy --training-job imgclf-251125-120000 --endpoint imgclf-dogs --wait
    smctl deploy --model-data s3://bucket/imgclf/output/JOB/output/model.tar.gz --data-capture
"""

from __future__ import annotations

from typing import Any

from smctl.aws import Api
from smctl.config import Settings, load_state, save_state
from smctl.errors import ConfigError, SmctlError
from smctl.training import resolve_image
from smctl.util import Poller, check_name, parse_pairs, timestamp

VARIANT = "AllTraffic"
#: Instance families with NVIDIA GPUs (ml.g4dn, ml.g5, ml.g6, ml.g6e, ml.p3, ml.p4d, ml.p5 ...).
GPU_FAMILIES = ("ml.g", "ml.p")


def is_gpu_instance(instance_type: str) -> bool:
    return instance_type.startswith(GPU_FAMILIES)


def add_parser(sub, parents) -> None:
    p = sub.add_parser("deploy", parents=parents,
                       help="deploy a model to a real-time endpoint (create or update)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model-data", metavar="S3_URI", help="model.tar.gz to serve")
    src.add_argument("--training-job", help="serve this training job's model (default: the last "
                                            "job 'smctl train' started)")
    p.add_argument("--endpoint", dest="endpoint_name", help="endpoint name (or endpoint_name setting)")
    p.add_argument("--image-uri", help="serving image (default: the image_uri setting, else the "
                                       "training job's image, else the last build-push)")
    p.add_argument("--instance-type", dest="serve_instance_type",
                   help="hosting instance type (default: ml.g4dn.xlarge)")
    p.add_argument("--instance-count", dest="serve_instance_count", type=int,
                   help="initial instance count (default: 1)")
    p.add_argument("--inference-ami-version", dest="inference_ami_version",
                   help="InferenceAmiVersion for GPU instances (default: "
                        "al2-ami-sagemaker-inference-gpu-3-1, NVIDIA driver 550); 'none' to omit")
    p.add_argument("--env", action="append", metavar="KEY=VALUE",
                   help="container environment variable (repeatable)")
    p.add_argument("--data-capture", action="store_true",
                   help="capture requests/responses to s3://BUCKET/PREFIX/data-capture/ENDPOINT")
    p.add_argument("--capture-percent", type=int, default=100,
                   help="with --data-capture: sampling percentage (default: 100)")
    p.add_argument("--update", action="store_true",
                   help="with --dry-run: show the UpdateEndpoint path (a real run detects it)")
    p.add_argument("--wait", action="store_true", help="wait until the endpoint is InService")
    p.add_argument("--poll-seconds", type=float, default=30.0,
                   help="seconds between status polls (default: 30)")
    p.set_defaults(func=run_deploy)


def model_source(args, api: Api) -> tuple[str, str | None]:
    """(ModelDataUrl, the image the model was trained with if known)."""
    if args.model_data:
        return args.model_data, None
    job = args.training_job or load_state().get("training_job")
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


def build_requests(settings: Settings, args, api: Api, model_data: str,
                   trained_image: str | None = None) -> dict[str, dict[str, Any]]:
    endpoint = check_name(settings.require("endpoint_name", "endpoint to create or update"),
                          "endpoint")
    stamp = timestamp()
    model_name = check_name(f"{endpoint[:49]}-{stamp}", "model")
    role = settings.require("role_arn", "SageMaker execution role")
    # Serve with the image that trained the model unless an image is given explicitly.
    explicit = settings.sources.get("image_uri", "default") != "default"
    image = settings.image_uri if explicit else (trained_image or resolve_image(settings))
    container: dict[str, Any] = {"Image": image, "ModelDataUrl": model_data}
    env = parse_pairs(args.env, "--env")
    if env:
        container["Environment"] = env
    variant: dict[str, Any] = {"VariantName": VARIANT, "ModelName": model_name,
                               "InstanceType": settings.serve_instance_type,
                               "InitialInstanceCount": settings.serve_instance_count,
                               "InitialVariantWeight": 1.0}
    ami = settings.inference_ami_version
    if is_gpu_instance(settings.serve_instance_type) and ami and ami.lower() != "none":
        variant["InferenceAmiVersion"] = ami
    config: dict[str, Any] = {"EndpointConfigName": model_name, "ProductionVariants": [variant]}
    if args.data_capture:
        config["DataCaptureConfig"] = {
            "EnableCapture": True,
            "InitialSamplingPercentage": args.capture_percent,
            "DestinationS3Uri": settings.s3_uri("data-capture", endpoint),
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
        }
    return {
        "model": {"ModelName": model_name, "ExecutionRoleArn": role, "PrimaryContainer": container},
        "config": config,
        "endpoint": {"EndpointName": endpoint, "EndpointConfigName": model_name},
    }


def endpoint_exists(api: Api, name: str) -> bool:
    from botocore.exceptions import ClientError
    try:
        api.client("sagemaker").describe_endpoint(EndpointName=name)
        return True
    except ClientError as e:
        if e.response["Error"]["Code"] == "ValidationException" and \
                "could not find" in e.response["Error"].get("Message", "").lower():
            return False
        raise


def run_deploy(args, settings: Settings, api: Api) -> int:
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
    print(f"{verb} endpoint {endpoint} with model {reqs['model']['ModelName']}"
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
            print(f"endpoint {endpoint} is InService: smctl invoke IMAGE --endpoint {endpoint}")
            return 0
        if status in ("Failed", "OutOfService", "Deleting"):
            raise SmctlError(f"endpoint {endpoint} is {status}: {desc.get('FailureReason', '')}".strip(),
                             f"see CloudWatch logs /aws/sagemaker/Endpoints/{endpoint}")
        poller.sleep()
