"""``smctl batch``: score every image under an S3 prefix with a batch transform job.

CreateModel (the same request ``deploy`` sends) + CreateTransformJob: ``SplitType`` None, so
each S3 object is one POST to the image's ``/invocations`` (``application/x-image``: the
server sniffs JPEG/PNG/... from the bytes) and its answer lands at
``OUTPUT/<key relative to DATA>.out`` (``Accept: application/json``, the top-k predictions).
SageMaker reads the image's ``GET /execution-parameters`` for ``MaxConcurrentTransforms`` and
``MaxPayloadInMB`` unless the flags set them; ``SAGEMAKER_BATCH=true`` tells the image it runs
a batch job (batch payload limit and a 600 s response timeout). Each request is retried up to
``--max-retries`` times and may take ``--invocation-timeout`` seconds (ModelClientConfig).

    smctl batch --data s3://bucket/imgclf/batch-in/ --output-path s3://bucket/imgclf/batch-out/ \\
        --training-job imgclf-251125-120000 --instance-type ml.g4dn.xlarge --wait
"""

from __future__ import annotations

from typing import Any

from imgclf.serving.content_types import JSON, X_IMAGE
from smctl.aws import Api
from smctl.config import Settings, save_state
from smctl.deploy import (add_model_arguments, check_model_flags, create_model_request, gpu_ami,
                          model_source)
from smctl.errors import ConfigError, SmctlError
from smctl.util import Poller, check_name, parse_pairs, split_s3, unique_name

#: SageMaker limits: MaxPayloadInMB <= 100; ModelClientConfig timeout 1-3600 s, retries 0-3.
MAX_PAYLOAD_MB = 100
DEFAULT_INVOCATION_TIMEOUT_S = 600
DEFAULT_MAX_RETRIES = 3
#: GPU transform hosts default to NVIDIA driver 470, too old for the CUDA 12.8 image; 535 runs
#: it through CUDA's minor-version compatibility (same reason as deploy's InferenceAmiVersion).
DEFAULT_TRANSFORM_AMI = "al2-ami-sagemaker-batch-gpu-535"
OUT_SUFFIX = ".out"


def add_parser(sub, parents) -> None:
    p = sub.add_parser("batch", parents=parents,
                       help="score every image under an S3 prefix (batch transform job)")
    p.add_argument("--data", metavar="S3_PREFIX", help="input images (every object under it)")
    p.add_argument("--output-path", metavar="S3_PREFIX",
                   help="where OBJECT.out files go (default: s3://BUCKET/PREFIX/batch/JOB)")
    add_model_arguments(p, "use", "")
    p.add_argument("--name", help="transform job (and model) name (default: BASE-YYMMDD-HHMMSS)")
    p.add_argument("--base-name", default="imgclf-batch",
                   help="prefix of generated names (default: imgclf-batch)")
    p.add_argument("--instance-type", dest="serve_instance_type",
                   help="transform instance type (default: the serve_instance_type setting, "
                        "ml.g4dn.xlarge)")
    p.add_argument("--instance-count", dest="serve_instance_count", type=int,
                   help="instances; SageMaker splits the objects between them (default: 1)")
    p.add_argument("--transform-ami-version", default=DEFAULT_TRANSFORM_AMI,
                   help=f"TransformAmiVersion for GPU instances (default: {DEFAULT_TRANSFORM_AMI}, "
                        "NVIDIA driver 535); 'none' to omit")
    p.add_argument("--max-concurrent", type=int, metavar="N",
                   help="MaxConcurrentTransforms per instance (default: the image's "
                        "/execution-parameters, its worker count)")
    p.add_argument("--max-payload-mb", type=int, metavar="N",
                   help=f"MaxPayloadInMB, 1-{MAX_PAYLOAD_MB}, the largest image (default: the "
                        "image's /execution-parameters)")
    p.add_argument("--invocation-timeout", type=int, default=DEFAULT_INVOCATION_TIMEOUT_S,
                   help=f"seconds per request, 1-3600 (default: {DEFAULT_INVOCATION_TIMEOUT_S})")
    p.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES,
                   help=f"retries per request, 0-3 (default: {DEFAULT_MAX_RETRIES})")
    p.add_argument("--wait", action="store_true",
                   help="follow the job: progress, then the counts and where the .out files are")
    p.add_argument("--poll-seconds", type=float, default=30.0,
                   help="seconds between status polls (default: 30)")
    local = p.add_argument_group("local batch transform (the same job on this machine, through "
                                 "the image; smctl/local/batch.py)")
    local.add_argument("--local", metavar="DIR",
                       help="score every file under DIR with `docker run IMAGE serve` here "
                            "instead of a SageMaker job")
    local.add_argument("--output", metavar="OUT",
                       help="--local: where OUT/<relative path>.out and failures.csv go")
    local.add_argument("--model-dir", metavar="M",
                       help="--local: the model folder (model.pt + model.json); or --training-job "
                            "NAME downloads that job's model.tar.gz")
    local.add_argument("--image", help="--local: image tag (default: make -s image-name)")
    p.set_defaults(func=run_batch)


def check_flags(args) -> None:
    if not args.model_data and not args.training_job:
        raise ConfigError("no model given", "pass --model-data S3_URI or --training-job NAME")
    check_model_flags(args)
    if not args.data:
        raise ConfigError("--data S3_PREFIX is required", "the S3 prefix holding the images")
    split_s3(args.data)
    if args.output_path:
        split_s3(args.output_path)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    if args.max_payload_mb is not None and not 1 <= args.max_payload_mb <= MAX_PAYLOAD_MB:
        raise ConfigError(f"--max-payload-mb {args.max_payload_mb} is out of range",
                          f"use 1 to {MAX_PAYLOAD_MB} (SageMaker's batch limit)")
    if not 1 <= args.invocation_timeout <= 3600:
        raise ConfigError(f"--invocation-timeout {args.invocation_timeout} is out of range",
                          "use 1 to 3600 seconds")
    if not 0 <= args.max_retries <= 3:
        raise ConfigError(f"--max-retries {args.max_retries} is out of range", "use 0 to 3")


def data_prefix(uri: str) -> str:
    """An S3Prefix matches key prefixes: ``in`` would also take ``input2/``; end it with ``/``."""
    return uri.rstrip("/") + "/"


def transform_request(settings: Settings, args, name: str, output: str) -> dict[str, Any]:
    env = {"SAGEMAKER_BATCH": "true"}
    if args.max_payload_mb is not None:
        env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(args.max_payload_mb)
    resources: dict[str, Any] = {"InstanceType": settings.serve_instance_type,
                                 "InstanceCount": settings.serve_instance_count}
    ami = gpu_ami(settings.serve_instance_type, args.transform_ami_version)
    if ami:
        resources["TransformAmiVersion"] = ami
    req: dict[str, Any] = {
        "TransformJobName": name,
        "ModelName": name,
        "BatchStrategy": "SingleRecord",
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": args.invocation_timeout,
                              "InvocationsMaxRetries": args.max_retries},
        "Environment": env,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                            "S3Uri": data_prefix(args.data)}},
            "ContentType": X_IMAGE,
            "SplitType": "None",
            "CompressionType": "None"},
        "TransformOutput": {"S3OutputPath": output, "Accept": JSON, "AssembleWith": "None"},
        "TransformResources": resources,
    }
    if args.max_concurrent is not None:
        req["MaxConcurrentTransforms"] = args.max_concurrent
    if args.max_payload_mb is not None:
        req["MaxPayloadInMB"] = args.max_payload_mb
    return req


def count_objects(api: Api, uri: str, suffix: str = "") -> int:
    """Objects under an S3 prefix (ListObjectsV2, every page), ``/`` folder markers left out."""
    bucket, prefix = split_s3(data_prefix(uri))
    n, token = 0, None
    while True:
        kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if token:
            kw["ContinuationToken"] = token
        page = api.call("s3", "list_objects_v2", **kw)
        n += sum(1 for o in page.get("Contents", [])
                 if not o["Key"].endswith("/") and o["Key"].endswith(suffix))
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return n


def check_input(api: Api, data: str, output: str) -> None:
    """A job on an empty prefix, or one writing into its own input, bills and then fails."""
    if data_prefix(output).startswith(data_prefix(data)):
        raise ConfigError(f"--output-path {output} is inside --data {data_prefix(data)}",
                          "a later job would score the .out files: write outputs elsewhere")
    bucket, prefix = split_s3(data_prefix(data))
    page = api.call("s3", "list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=100)
    if page is not None and not any(not o["Key"].endswith("/") for o in page.get("Contents", [])):
        raise ConfigError(f"no objects under {data_prefix(data)}",
                          "check --data (and --region: the bucket must be in the job's region)")


def run_batch(args, settings: Settings, api: Api) -> int:
    if args.local:
        from smctl.local.batch import run_local_batch
        return run_local_batch(args, settings, api)
    for flag in ("output", "model_dir", "image"):
        if getattr(args, flag):
            raise ConfigError(f"--{flag.replace('_', '-')} goes with --local DIR",
                              "SageMaker jobs take --output-path and --model-data/--training-job")
    check_flags(args)
    name = check_name(args.name or unique_name(args.base_name), "transform job")
    output = (args.output_path or settings.s3_uri("batch", name)).rstrip("/")
    check_input(api, args.data, output)
    model_data, trained_image = model_source(args, api, use_last_job=False)
    model = create_model_request(settings, name, model_data, trained_image,
                                 parse_pairs(args.env, "--env"))
    job = transform_request(settings, args, name, output)
    api.call("sagemaker", "create_model", **model)
    api.call("sagemaker", "create_transform_job", **job)
    if api.dry_run:
        return 0
    save_state(transform_job=name)
    print(f"started transform job {name}: {job['TransformInput']['DataSource']['S3DataSource']['S3Uri']}"
          f" -> {output}/")
    if not args.wait:
        print(f"  follow: aws sagemaker describe-transform-job --transform-job-name {name}")
        return 0
    return wait_transform(api, name, args.data, output, Poller(args.poll_seconds))


def wait_transform(api: Api, name: str, data: str, output: str, poller: Poller) -> int:
    """Poll DescribeTransformJob; show status and .out files so far; end with the counts.

    DescribeTransformJob gives no record counts, so they come from S3: objects under the input
    prefix and ``.out`` objects under the output prefix.
    """
    total = count_objects(api, data)
    api.log(f"[{name}] {total} input object(s) under {data_prefix(data)}")
    last = None
    while True:
        desc = api.call("sagemaker", "describe_transform_job", TransformJobName=name)
        status = desc["TransformJobStatus"]
        done = count_objects(api, output, OUT_SUFFIX)
        line = f"[{name}] {status}: {done}/{total} .out file(s)"
        if line != last:
            api.log(line)
            last = line
        if status in ("Completed", "Failed", "Stopped"):
            break
        poller.sleep()
    start, end = desc.get("TransformStartTime"), desc.get("TransformEndTime")
    took = f" in {(end - start).total_seconds():.0f} s" if start and end else ""
    print(f"transform job {name} {status}{took}: {total} input object(s), {done} .out file(s), "
          f"{max(total - done, 0)} without output")
    print(f"outputs: {output}/<input key relative to {data_prefix(data)}>{OUT_SUFFIX}")
    if status != "Completed":
        raise SmctlError(f"transform job {name} {status}: {desc.get('FailureReason', 'no reason given')}",
                         f"see CloudWatch logs /aws/sagemaker/TransformJobs ({name}/...)")
    return 0
