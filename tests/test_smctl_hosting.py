"""smctl's hosting modes beyond one real-time endpoint: batch transform, serverless, async, autoscaling.

Like tests/test_smctl_requests.py, each test runs the real CLI against real botocore clients
with Stubbers: every request is validated against the pinned botocore's service model (so a
field or enum value that botocore 1.44.8 lacks fails here), then compared with the expected
parameters. Bad flags must exit 2 with one line before any client exists.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY

from smctl.cli import main
from smctl.errors import is_not_found
from smctl_helpers import (BUCKET, IMAGE, REGION, ROLE, aws_env, base_args,  # noqa: F401
                           streaming, stubs, tiny_jpeg, tiny_png)

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
ARN = f"arn:aws:sagemaker:{REGION}:123456789012:resource/test"
MODEL_DATA = f"s3://{BUCKET}/imgclf/output/dogs-2/output/model.tar.gz"
DIM = "sagemaker:variant:DesiredInstanceCount"
POLICY_ARN = (f"arn:aws:autoscaling:{REGION}:123456789012:scalingPolicy:1234:resource/sagemaker/"
              "endpoint/ep/variant/AllTraffic:policyName/x")
PREDICTIONS = {"predictions": [{"label": "001.Affenpinscher", "index": 0, "probability": 0.9,
                                "topk": [{"label": "001.Affenpinscher", "index": 0,
                                          "probability": 0.9},
                                         {"label": "002.Afghan_hound", "index": 1,
                                          "probability": 0.07}]}]}


def _no_clients(service, region):
    raise AssertionError(f"a {service} client was created")


def _training_job(image=IMAGE):
    return {"TrainingJobName": "dogs-2", "TrainingJobArn": ARN, "TrainingJobStatus": "Completed",
            "SecondaryStatus": "Completed", "CreationTime": T0,
            "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": image},
            "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1,
                               "VolumeSizeInGB": 50},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
            "ModelArtifacts": {"S3ModelArtifacts": MODEL_DATA}}


def _one_line_usage_error(capsys) -> str:
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert cap.out == "" and len(lines) == 1, cap.err
    return lines[0]


# -- batch transform -----------------------------------------------------------------------------
def _objects(keys, truncated=False, token=None):
    page = {"IsTruncated": truncated, "KeyCount": len(keys),
            "Contents": [{"Key": k, "Size": 10} for k in keys]}
    if token:
        page["NextContinuationToken"] = token
    return page


def _transform_job(status, **extra):
    return {"TransformJobName": "dogs-batch", "TransformJobArn": ARN, "TransformJobStatus": status,
            "ModelName": "dogs-batch", "CreationTime": T0,
            "TransformInput": {"DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/in/"}}},
            "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2}, **extra}


def test_batch_creates_model_and_transform_job_and_waits_for_the_outputs(stubs, aws_env, capsys,
                                                                        monkeypatch):
    sm, s3 = stubs["sagemaker"], stubs["s3"]
    s3.add_response("list_objects_v2", _objects(["in/", "in/a/1.jpg"]),  # pre-flight: not empty
                    {"Bucket": BUCKET, "Prefix": "in/", "MaxKeys": 100})
    sm.add_response("describe_training_job", _training_job(), {"TrainingJobName": "dogs-2"})
    sm.add_response("create_model", {"ModelArn": ARN}, {
        "ModelName": "dogs-batch", "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": MODEL_DATA,
                             "Environment": {"IMGCLF_DEFAULT_TOPK": "3"}}})
    sm.add_response("create_transform_job", {"TransformJobArn": ARN}, {
        "TransformJobName": "dogs-batch", "ModelName": "dogs-batch",
        "BatchStrategy": "SingleRecord",
        "MaxConcurrentTransforms": 4, "MaxPayloadInMB": 20,
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": 600, "InvocationsMaxRetries": 3},
        "Environment": {"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"},
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                           "S3Uri": f"s3://{BUCKET}/in/"}},
                           "ContentType": "application/x-image", "SplitType": "None",
                           "CompressionType": "None"},
        "TransformOutput": {"S3OutputPath": f"s3://{BUCKET}/out", "Accept": "application/json",
                            "AssembleWith": "None"},
        "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2}})  # CPU: no AMI
    # --wait: the inputs are counted once (two pages; the folder marker is not an input) ...
    s3.add_response("list_objects_v2", _objects(["in/", "in/a/1.jpg", "in/a/2.png"], True, "t1"),
                    {"Bucket": BUCKET, "Prefix": "in/"})
    s3.add_response("list_objects_v2", _objects(["in/b/3.jpg"]),
                    {"Bucket": BUCKET, "Prefix": "in/", "ContinuationToken": "t1"})
    # ... then each poll reads the job and counts the .out files written so far.
    sm.add_response("describe_transform_job", _transform_job("InProgress"),
                    {"TransformJobName": "dogs-batch"})
    s3.add_response("list_objects_v2", _objects(["out/a/1.jpg.out"]),
                    {"Bucket": BUCKET, "Prefix": "out/"})

    def sleep(self):
        sm.add_response("describe_transform_job", _transform_job(
            "Completed", TransformStartTime=T0, TransformEndTime=T0 + timedelta(seconds=95)),
            {"TransformJobName": "dogs-batch"})
        s3.add_response("list_objects_v2", _objects(["out/a/1.jpg.out", "out/a/2.png.out",
                                                     "out/b/3.jpg.out", "out/b/notes.txt"]),
                        {"Bucket": BUCKET, "Prefix": "out/"})
    monkeypatch.setattr("smctl.util.Poller.sleep", sleep)
    rc = main(["batch", *base_args(), "--image-uri", IMAGE, "--training-job", "dogs-2",
               "--data", f"s3://{BUCKET}/in", "--output-path", f"s3://{BUCKET}/out/",
               "--name", "dogs-batch", "--instance-type", "ml.m5.xlarge", "--instance-count", "2",
               "--max-concurrent", "4", "--max-payload-mb", "20", "--env", "IMGCLF_DEFAULT_TOPK=3",
               "--wait", "--poll-seconds", "0"], client_factory=stubs)
    assert rc == 0
    cap = capsys.readouterr()
    assert "[dogs-batch] 3 input object(s)" in cap.err
    assert "[dogs-batch] InProgress: 1/3 .out file(s)" in cap.err
    assert ("transform job dogs-batch Completed in 95 s: 3 input object(s), 3 .out file(s), "
            "0 without output") in cap.out
    assert f"outputs: s3://{BUCKET}/out/<input key relative to s3://{BUCKET}/in/>.out" in cap.out
    assert json.loads((aws_env / "smctl-state.json").read_text())["transform_job"] == "dogs-batch"


def test_batch_on_gpu_gets_the_transform_ami_and_a_failed_job_exits_1(stubs, capsys,
                                                                      monkeypatch):
    sm, s3 = stubs["sagemaker"], stubs["s3"]
    s3.add_response("list_objects_v2", _objects(["in/1.jpg"]),
                    {"Bucket": BUCKET, "Prefix": "in/", "MaxKeys": 100})
    sm.add_response("create_model", {"ModelArn": ARN}, {
        "ModelName": ANY, "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": "s3://b/m/model.tar.gz"}})
    captured = {}
    stubs.client("sagemaker").meta.events.register(
        "provide-client-params.sagemaker.CreateTransformJob",
        lambda params, **kw: captured.update(params))
    sm.add_response("create_transform_job", {"TransformJobArn": ARN}, {
        "TransformJobName": ANY, "ModelName": ANY, "BatchStrategy": "SingleRecord",
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": 120, "InvocationsMaxRetries": 0},
        "Environment": {"SAGEMAKER_BATCH": "true"}, "TransformInput": ANY,
        "TransformOutput": {"S3OutputPath": ANY, "Accept": "application/json",
                            "AssembleWith": "None"},
        "TransformResources": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1,
                               "TransformAmiVersion": "al2-ami-sagemaker-batch-gpu-535"}})
    s3.add_response("list_objects_v2", _objects(["in/1.jpg", "in/2.jpg"]),
                    {"Bucket": BUCKET, "Prefix": "in/"})
    sm.add_response("describe_transform_job", _transform_job(
        "Failed", FailureReason="ClientError: See job logs for more information"),
        {"TransformJobName": ANY})
    prefixes = []
    stubs.client("s3").meta.events.register("provide-client-params.s3.ListObjectsV2",
                                            lambda params, **kw: prefixes.append(params["Prefix"]))
    s3.add_response("list_objects_v2", _objects([]), {"Bucket": BUCKET, "Prefix": ANY})
    rc = main(["batch", *base_args(), "--image-uri", IMAGE, "--model-data", "s3://b/m/model.tar.gz",
               "--data", f"s3://{BUCKET}/in/", "--invocation-timeout", "120", "--max-retries", "0",
               "--wait", "--poll-seconds", "0"], client_factory=stubs)
    assert rc == 1
    name = captured["TransformJobName"]
    assert name.startswith("imgclf-batch-") and captured["ModelName"] == name
    # no --output-path: s3://BUCKET/PREFIX/batch/JOB
    assert captured["TransformOutput"]["S3OutputPath"] == f"s3://{BUCKET}/imgclf/batch/{name}"
    assert prefixes == ["in/", "in/", f"imgclf/batch/{name}/"]  # pre-flight, inputs, outputs
    cap = capsys.readouterr()
    assert "2 input object(s), 0 .out file(s), 2 without output" in cap.out
    err = cap.err.strip().splitlines()[-1]
    assert err.startswith(f"smctl: error: transform job {name} Failed: ClientError")
    assert "/aws/sagemaker/TransformJobs" in err


@pytest.mark.parametrize("argv, words", [
    (["--data", "s3://b/in"], "no model given"),
    (["--data", "s3://b/in", "--model-data", "s3://b/m.tar.gz", "--training-job", "j"],
     "both given"),
    (["--model-data", "s3://b/m.tar.gz"], "--data S3_PREFIX is required"),
    (["--model-data", "s3://b/m.tar.gz", "--data", "/local/dir"], "not an S3 URI"),
    (["--model-data", "b/m.tar.gz", "--data", "s3://b/in"], "not an S3 URI"),
    (["--model-data", "s3://b/m.tar.gz", "--data", "s3://b/in", "--max-payload-mb", "101"],
     "--max-payload-mb 101"),
    (["--model-data", "s3://b/m.tar.gz", "--data", "s3://b/in", "--max-payload-mb", "0"],
     "--max-payload-mb 0"),
    (["--model-data", "s3://b/m.tar.gz", "--data", "s3://b/in", "--max-concurrent", "0"],
     "--max-concurrent"),
    (["--model-data", "s3://b/m.tar.gz", "--data", "s3://b/in", "--max-retries", "4"],
     "--max-retries 4"),
    (["--model-data", "s3://b/m.tar.gz", "--data", "s3://b/in", "--invocation-timeout", "3601"],
     "--invocation-timeout 3601"),
])
def test_batch_bad_flags_exit_2_before_any_request(aws_env, capsys, argv, words):
    assert main(["batch", *base_args(), "--image-uri", IMAGE, *argv],
                client_factory=_no_clients) == 2
    assert words in _one_line_usage_error(capsys)


def test_batch_refuses_an_empty_input_prefix_and_outputs_inside_the_input(stubs, capsys):
    stubs["s3"].add_response("list_objects_v2", _objects(["in/", "in/sub/"]),  # folders only
                             {"Bucket": BUCKET, "Prefix": "in/", "MaxKeys": 100})
    argv = ["batch", *base_args(), "--image-uri", IMAGE, "--model-data", "s3://b/m.tar.gz"]
    assert main([*argv, "--data", f"s3://{BUCKET}/in"], client_factory=stubs) == 2
    assert f"no objects under s3://{BUCKET}/in/" in _one_line_usage_error(capsys)
    assert "sagemaker" not in stubs.clients  # no model, no job
    assert main([*argv, "--data", f"s3://{BUCKET}/in", "--output-path", f"s3://{BUCKET}/in/out"],
                client_factory=_no_clients) == 2
    assert "is inside --data" in _one_line_usage_error(capsys)


# -- serverless and async endpoints ------------------------------------------------------------
def _no_endpoint(sm, name="ep"):
    sm.add_client_error("describe_endpoint", "ValidationException",
                        f'Could not find endpoint "{name}".', 400,
                        expected_params={"EndpointName": name})


def test_deploy_serverless_sends_a_serverless_variant_with_one_worker(stubs, capsys):
    sm = stubs["sagemaker"]
    _no_endpoint(sm)
    sm.add_response("create_model", {"ModelArn": ARN}, {
        "ModelName": ANY, "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": "s3://b/m/model.tar.gz",
                             "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                                             "IMGCLF_DEFAULT_TOPK": "2"}}})
    sm.add_response("create_endpoint_config", {"EndpointConfigArn": ARN}, {
        "EndpointConfigName": ANY,
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": ANY,
                                "InitialVariantWeight": 1.0,
                                "ServerlessConfig": {"MemorySizeInMB": 6144, "MaxConcurrency": 20,
                                                     "ProvisionedConcurrency": 2}}]})
    sm.add_response("create_endpoint", {"EndpointArn": ARN},
                    {"EndpointName": "ep", "EndpointConfigName": ANY})
    rc = main(["deploy", *base_args(), "--image-uri", IMAGE, "--model-data",
               "s3://b/m/model.tar.gz", "--endpoint", "ep", "--serverless", "--memory-mb", "6144",
               "--max-concurrency", "20", "--provisioned-concurrency", "2",
               "--env", "IMGCLF_DEFAULT_TOPK=2"], client_factory=stubs)
    assert rc == 0
    assert "creating endpoint ep (serverless)" in capsys.readouterr().out


def test_deploy_serverless_defaults_ignore_the_configured_instance_type(stubs, aws_env):
    # serve_instance_type from a config file is not a flag: serverless just leaves it out.
    (aws_env / "smctl.toml").write_text('serve_instance_type = "ml.g5.xlarge"\n')
    sm = stubs["sagemaker"]
    _no_endpoint(sm)
    sm.add_response("create_model", {"ModelArn": ARN}, {
        "ModelName": ANY, "ExecutionRoleArn": ROLE, "PrimaryContainer": ANY})
    sm.add_response("create_endpoint_config", {"EndpointConfigArn": ARN}, {
        "EndpointConfigName": ANY,
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": ANY,
                                "InitialVariantWeight": 1.0,
                                "ServerlessConfig": {"MemorySizeInMB": 2048,
                                                     "MaxConcurrency": 5}}]})
    sm.add_response("create_endpoint", {"EndpointArn": ARN},
                    {"EndpointName": "ep", "EndpointConfigName": ANY})
    assert main(["deploy", *base_args(), "--image-uri", IMAGE, "--model-data", "s3://b/m.tar.gz",
                 "--endpoint", "ep", "--serverless"], client_factory=stubs) == 0


def test_deploy_async_sends_async_inference_config_on_gpu_instances(stubs, capsys):
    sm = stubs["sagemaker"]
    _no_endpoint(sm)
    sm.add_response("create_model", {"ModelArn": ARN}, {
        "ModelName": ANY, "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": "s3://b/m/model.tar.gz"}})
    sm.add_response("create_endpoint_config", {"EndpointConfigArn": ARN}, {
        "EndpointConfigName": ANY,
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": ANY,
                                "InitialVariantWeight": 1.0, "InstanceType": "ml.g4dn.xlarge",
                                "InitialInstanceCount": 1,
                                "InferenceAmiVersion": "al2-ami-sagemaker-inference-gpu-3-1"}],
        "AsyncInferenceConfig": {
            "OutputConfig": {
                "S3OutputPath": f"s3://{BUCKET}/async/out",
                "S3FailurePath": f"s3://{BUCKET}/async/err",
                "NotificationConfig": {
                    "SuccessTopic": f"arn:aws:sns:{REGION}:123456789012:ok",
                    "ErrorTopic": f"arn:aws:sns:{REGION}:123456789012:bad"}},
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4}}})
    sm.add_response("create_endpoint", {"EndpointArn": ARN},
                    {"EndpointName": "ep", "EndpointConfigName": ANY})
    rc = main(["deploy", *base_args(), "--image-uri", IMAGE, "--model-data",
               "s3://b/m/model.tar.gz", "--endpoint", "ep", "--async",
               "--async-output", f"s3://{BUCKET}/async/out/",
               "--async-failure", f"s3://{BUCKET}/async/err",
               "--sns-success", f"arn:aws:sns:{REGION}:123456789012:ok",
               "--sns-error", f"arn:aws:sns:{REGION}:123456789012:bad",
               "--max-concurrent-invocations", "4"], client_factory=stubs)
    assert rc == 0
    assert "creating endpoint ep (asynchronous)" in capsys.readouterr().out


def test_deploy_async_failure_path_defaults_under_the_output(aws_env, capsys):
    assert main(["deploy", *base_args(), "--image-uri", IMAGE, "--model-data", "s3://b/m.tar.gz",
                 "--endpoint", "ep", "--async", "--async-output", "s3://b/out", "--dry-run"],
                client_factory=_no_clients) == 0
    reqs = json.loads(capsys.readouterr().out)
    cfg = next(r["request"] for r in reqs if r["operation"] == "CreateEndpointConfig")
    assert cfg["AsyncInferenceConfig"] == {"OutputConfig": {
        "S3OutputPath": "s3://b/out", "S3FailurePath": "s3://b/out/failures"}}


@pytest.mark.parametrize("argv, words", [
    (["--serverless", "--memory-mb", "1500"], "--memory-mb 1500"),
    (["--serverless", "--memory-mb", "512"], "--memory-mb 512"),
    (["--serverless", "--memory-mb", "7168"], "--memory-mb 7168"),
    (["--serverless", "--max-concurrency", "0"], "--max-concurrency 0"),
    (["--serverless", "--max-concurrency", "201"], "--max-concurrency 201"),
    (["--serverless", "--max-concurrency", "4", "--provisioned-concurrency", "5"],
     "--provisioned-concurrency 5"),
    (["--serverless", "--provisioned-concurrency", "6"], "--provisioned-concurrency 6"),
    (["--provisioned-concurrency", "1"], "--provisioned-concurrency needs --serverless"),
    (["--memory-mb", "2048"], "--memory-mb needs --serverless"),
    (["--serverless", "--instance-type", "ml.m5.large"], "--instance-type does not apply"),
    (["--serverless", "--instance-count", "2"], "--instance-count does not apply"),
    (["--serverless", "--data-capture"], "--data-capture does not apply"),
    (["--serverless", "--async", "--async-output", "s3://b/o"], "both given"),
    (["--async"], "--async needs --async-output"),
    (["--async-output", "s3://b/o"], "--async-output needs --async"),
    (["--sns-error", "arn:aws:sns:us-west-2:1:t"], "--sns-error needs --async"),
    (["--async", "--async-output", "b/o"], "not an S3 URI"),
    (["--async", "--async-output", "s3://b/o", "--sns-success", "topic"], "not an SNS topic ARN"),
    (["--async", "--async-output", "s3://b/o", "--max-concurrent-invocations", "0"],
     "--max-concurrent-invocations 0"),
])
def test_deploy_bad_mode_flags_exit_2_before_any_request(aws_env, capsys, argv, words):
    assert main(["deploy", *base_args(), "--image-uri", IMAGE, "--model-data", "s3://b/m.tar.gz",
                 "--endpoint", "ep", *argv], client_factory=_no_clients) == 2
    assert words in _one_line_usage_error(capsys)


# -- invoke --async ------------------------------------------------------------------------------
def _async_requests(stubs, aws_env, ctype, data):
    put = {}
    stubs.client("s3").meta.events.register("provide-client-params.s3.PutObject",
                                            lambda params, **kw: put.update(params))
    stubs["s3"].add_response("put_object", {"ETag": '"x"'},
                             {"Bucket": BUCKET, "Key": ANY, "Body": data, "ContentType": ctype})
    stubs["sagemaker-runtime"].add_response(
        "invoke_endpoint_async",
        {"InferenceId": "inf-1", "OutputLocation": f"s3://{BUCKET}/async/out/inf-1.out",
         "FailureLocation": f"s3://{BUCKET}/async/err/inf-1-error.out"},
        {"EndpointName": "ep", "InputLocation": ANY, "ContentType": ctype,
         "Accept": "application/json", "CustomAttributes": "topk=2",
         "InvocationTimeoutSeconds": 300})
    return put


def _missing(s3, key):
    s3.add_client_error("get_object", "NoSuchKey", "The specified key does not exist.", 404,
                        expected_params={"Bucket": BUCKET, "Key": key})


def test_invoke_async_uploads_invokes_and_prints_the_result_like_sync(stubs, aws_env, capsys):
    png = tiny_png()
    (aws_env / "dog.png").write_bytes(png)
    put = _async_requests(stubs, aws_env, "image/png", png)
    s3 = stubs["s3"]
    _missing(s3, "async/out/inf-1.out")        # poll 1: not there yet,
    _missing(s3, "async/err/inf-1-error.out")  # and no failure either
    s3.add_response("get_object", {"Body": streaming(json.dumps(PREDICTIONS).encode())},
                    {"Bucket": BUCKET, "Key": "async/out/inf-1.out"})
    rc = main(["invoke", "dog.png", "--async", "--region", REGION, "--bucket", BUCKET,
               "--endpoint", "ep", "--top-k", "2", "--async-invocation-timeout", "300",
               "--async-poll", "0"], client_factory=stubs)
    assert rc == 0
    key = put["Key"]
    assert key.startswith("imgclf/async-input/ep/") and key.endswith("/dog.png")
    cap = capsys.readouterr()
    assert "queued as inf-1" in cap.err
    out = cap.out.splitlines()
    assert out[0] == "dog.png:"
    assert out[2].split() == ["1", "001.Affenpinscher", "0.9000"]
    assert out[3].split() == ["2", "002.Afghan_hound", "0.0700"]


def test_invoke_async_failure_object_is_one_error_line(stubs, aws_env, capsys):
    jpeg = tiny_jpeg()
    (aws_env / "x.jpg").write_bytes(jpeg)
    _async_requests(stubs, aws_env, "image/jpeg", jpeg)
    s3 = stubs["s3"]
    _missing(s3, "async/out/inf-1.out")
    s3.add_response("get_object",
                    {"Body": streaming(b'{"error": "cannot decode image:\\n truncated"}')},
                    {"Bucket": BUCKET, "Key": "async/err/inf-1-error.out"})
    rc = main(["invoke", "x.jpg", "--async", "--region", REGION, "--bucket", BUCKET,
               "--endpoint", "ep", "--top-k", "2", "--async-invocation-timeout", "300",
               "--async-poll", "0"], client_factory=stubs)
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("smctl: error: asynchronous request failed:")
    assert "truncated" in err and "inf-1-error.out" in err


def test_invoke_async_dry_run_and_bad_flags(aws_env, capsys):
    (aws_env / "a.jpg").write_bytes(tiny_jpeg())
    assert main(["invoke", "a.jpg", "--async", "--endpoint", "ep", *base_args(), "--dry-run"],
                client_factory=_no_clients) == 0
    reqs = json.loads(capsys.readouterr().out)
    assert [r["operation"] for r in reqs] == ["PutObject", "InvokeEndpointAsync"]
    uri = f"s3://{reqs[0]['request']['Bucket']}/{reqs[0]['request']['Key']}"
    assert reqs[1]["request"]["InputLocation"] == uri
    assert main(["invoke", "a.jpg", "--async", "--url", "http://127.0.0.1:9", *base_args()],
                client_factory=_no_clients) == 2
    assert "--async goes to a SageMaker endpoint" in _one_line_usage_error(capsys)
    assert main(["invoke", "a.jpg", "--async", "--endpoint", "ep", "--async-invocation-timeout",
                 "0", *base_args()], client_factory=_no_clients) == 2
    assert "--async-invocation-timeout 0" in _one_line_usage_error(capsys)


# -- autoscale -----------------------------------------------------------------------------------
def _endpoint(sm, name="ep", **config_extra):
    sm.add_response("describe_endpoint", {"EndpointName": name, "EndpointArn": ARN,
                                          "EndpointConfigName": f"{name}-cfg",
                                          "EndpointStatus": "InService", "CreationTime": T0,
                                          "LastModifiedTime": T0}, {"EndpointName": name})
    variant = {"VariantName": "Blue", "ModelName": "m"}
    variant.update(config_extra.pop("variant", {"InstanceType": "ml.m5.large",
                                                "InitialInstanceCount": 1}))
    sm.add_response("describe_endpoint_config", {
        "EndpointConfigName": f"{name}-cfg", "EndpointConfigArn": ARN, "CreationTime": T0,
        "ProductionVariants": [variant], **config_extra}, {"EndpointConfigName": f"{name}-cfg"})


TARGET = {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/ep/variant/Blue",
          "ScalableDimension": DIM}


@pytest.mark.parametrize("flag, metric", [
    ("--target-invocations", "SageMakerVariantInvocationsPerInstance"),
    ("--target-concurrency", "SageMakerVariantConcurrentRequestsPerModelHighResolution"),
])
def test_autoscale_real_time_endpoint_tracks_a_predefined_metric(stubs, capsys, flag, metric):
    _endpoint(stubs["sagemaker"])
    aas = stubs["application-autoscaling"]
    aas.add_response("register_scalable_target", {},
                     {**TARGET, "MinCapacity": 1, "MaxCapacity": 4})
    aas.add_response("put_scaling_policy", {"PolicyARN": POLICY_ARN}, {
        **TARGET, "PolicyName": ANY, "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 50.0, "ScaleInCooldown": 600, "ScaleOutCooldown": 60,
            "PredefinedMetricSpecification": {"PredefinedMetricType": metric}}})
    rc = main(["autoscale", "--region", REGION, "--endpoint", "ep", "--min", "1", "--max", "4",
               flag, "50", "--scale-in-cooldown", "600"], client_factory=stubs)
    assert rc == 0
    assert "scaling endpoint/ep/variant/Blue between 1 and 4 instances" in capsys.readouterr().out


def test_autoscale_async_endpoint_scales_to_and_from_zero(stubs, capsys):
    _endpoint(stubs["sagemaker"], AsyncInferenceConfig={
        "OutputConfig": {"S3OutputPath": f"s3://{BUCKET}/async/out"}})
    aas, cw = stubs["application-autoscaling"], stubs["cloudwatch"]
    aas.add_response("register_scalable_target", {},
                     {**TARGET, "MinCapacity": 0, "MaxCapacity": 2})
    aas.add_response("put_scaling_policy", {"PolicyARN": POLICY_ARN + "-tt"}, {
        **TARGET, "PolicyName": "ep-backlog", "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 5.0, "ScaleInCooldown": 300, "ScaleOutCooldown": 60,
            "CustomizedMetricSpecification": {
                "MetricName": "ApproximateBacklogSizePerInstance", "Namespace": "AWS/SageMaker",
                "Dimensions": [{"Name": "EndpointName", "Value": "ep"}],
                "Statistic": "Average"}}})
    aas.add_response("put_scaling_policy", {"PolicyARN": POLICY_ARN}, {
        **TARGET, "PolicyName": "ep-scale-out-from-zero", "PolicyType": "StepScaling",
        "StepScalingPolicyConfiguration": {
            "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
            "Cooldown": 60,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]}})
    cw.add_response("put_metric_alarm", {}, {
        "AlarmName": "ep-HasBacklogWithoutCapacity", "AlarmDescription": ANY,
        "Namespace": "AWS/SageMaker", "MetricName": "HasBacklogWithoutCapacity",
        "Dimensions": [{"Name": "EndpointName", "Value": "ep"}], "Statistic": "Average",
        "Period": 60, "EvaluationPeriods": 2, "DatapointsToAlarm": 2, "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "missing",
        "AlarmActions": [POLICY_ARN]})  # the step policy just created
    rc = main(["autoscale", "--region", REGION, "--endpoint", "ep", "--min", "0", "--max", "2",
               "--target-backlog", "5"], client_factory=stubs)
    assert rc == 0
    assert "alarm ep-HasBacklogWithoutCapacity scales out from zero" in capsys.readouterr().out


@pytest.mark.parametrize("config, argv, words", [
    ({"variant": {"ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 5}}},
     ["--target-invocations", "10"], "is a serverless endpoint"),
    ({"AsyncInferenceConfig": {"OutputConfig": {"S3OutputPath": "s3://b/o"}}},
     ["--target-invocations", "10"], "--target-backlog"),
    ({}, ["--target-backlog", "3"], "is a real-time endpoint"),
    ({}, ["--target-invocations", "3", "--variant", "Green"], "has no production variant Green"),
])
def test_autoscale_refuses_a_metric_that_does_not_fit_the_endpoint(stubs, capsys, config, argv,
                                                                   words):
    _endpoint(stubs["sagemaker"], **config)
    rc = main(["autoscale", "--region", REGION, "--endpoint", "ep", "--min", "1", "--max", "2",
               *argv], client_factory=stubs)
    assert rc == 2
    assert words in _one_line_usage_error(capsys)
    assert "application-autoscaling" not in stubs.clients  # nothing registered


@pytest.mark.parametrize("argv, words", [
    (["--min", "3", "--max", "2", "--target-invocations", "10"], "--min 3 is above --max 2"),
    (["--max", "2", "--target-invocations", "10"], "--min N and --max M are required"),
    (["--min", "1", "--max", "2"], "exactly one of --target-invocations"),
    (["--min", "1", "--max", "2", "--target-invocations", "1", "--target-concurrency", "1"],
     "exactly one of --target-invocations"),
    (["--min", "0", "--max", "2", "--target-invocations", "10"], "--min 0 needs an asynchronous"),
    (["--min", "0", "--max", "0", "--target-backlog", "1"], "--max >= 1"),
    (["--min", "1", "--max", "2", "--target-concurrency", "0"], "must be > 0"),
    (["--min", "1", "--max", "2", "--target-invocations", "5", "--scale-in-cooldown", "-1"],
     "--scale-in-cooldown"),
])
def test_autoscale_bad_flags_exit_2_before_any_request(aws_env, capsys, argv, words):
    assert main(["autoscale", "--region", REGION, "--endpoint", "ep", *argv],
                client_factory=_no_clients) == 2
    assert words in _one_line_usage_error(capsys)


# -- cleanup removes scaling ----------------------------------------------------------------------
def test_cleanup_removes_scaling_targets_and_our_alarm_first(stubs, capsys):
    sm, aas, cw = stubs["sagemaker"], stubs["application-autoscaling"], stubs["cloudwatch"]
    _endpoint(sm)
    target = {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/ep/variant/Blue",
              "ScalableDimension": DIM, "MinCapacity": 0, "MaxCapacity": 2,
              "RoleARN": ROLE, "CreationTime": T0}
    aas.add_response("describe_scalable_targets", {"ScalableTargets": [target]},
                     {"ServiceNamespace": "sagemaker", "ResourceIds": ["endpoint/ep/variant/Blue"],
                      "ScalableDimension": DIM})
    policy = {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/ep/variant/Blue",
              "ScalableDimension": DIM, "PolicyARN": POLICY_ARN, "CreationTime": T0}
    aas.add_response("describe_scaling_policies", {"ScalingPolicies": [
        {**policy, "PolicyName": "ep-backlog", "PolicyType": "TargetTrackingScaling",
         "Alarms": [{"AlarmName": "TargetTracking-endpoint/ep-AlarmHigh", "AlarmARN": "a1"}]},
        {**policy, "PolicyName": "ep-scale-out-from-zero", "PolicyType": "StepScaling",
         "Alarms": [{"AlarmName": "ep-HasBacklogWithoutCapacity", "AlarmARN": "a2"}]}]},
        TARGET)
    # only our alarm: target tracking's own alarms go with its policy
    cw.add_response("delete_alarms", {}, {"AlarmNames": ["ep-HasBacklogWithoutCapacity"]})
    aas.add_response("deregister_scalable_target", {}, TARGET)
    sm.add_response("delete_endpoint", {}, {"EndpointName": "ep"})
    sm.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "ep-cfg"})
    sm.add_client_error("delete_model", "ValidationException", 'Could not find model "m".', 400,
                        expected_params={"ModelName": "m"})
    rc = main(["cleanup", "--region", REGION, "--endpoint", "ep", "--yes"], client_factory=stubs)
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert "  scaling target endpoint/ep/variant/Blue and its policies" in out
    deleted = [l for l in out if l.startswith("deleted") or l.endswith("already gone")]
    assert deleted == ["deleted alarm ep-HasBacklogWithoutCapacity",
                       "deleted scaling target endpoint/ep/variant/Blue",
                       "deleted endpoint ep", "deleted endpoint config ep-cfg",
                       "model m was already gone"]


def test_cleanup_without_autoscaling_permission_warns_and_still_deletes(stubs, capsys):
    sm = stubs["sagemaker"]
    _endpoint(sm)
    stubs["application-autoscaling"].add_client_error(
        "describe_scalable_targets", "AccessDeniedException", "not authorized", 400)
    sm.add_response("delete_endpoint", {}, {"EndpointName": "ep"})
    sm.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "ep-cfg"})
    sm.add_response("delete_model", {}, {"ModelName": "m"})
    rc = main(["cleanup", "--region", REGION, "--endpoint", "ep", "--yes"], client_factory=stubs)
    assert rc == 0
    cap = capsys.readouterr()
    assert "cannot read Application Auto Scaling targets" in cap.err
    assert "deleted model m" in cap.out


# -- dry run and the one not-found test ----------------------------------------------------------
@pytest.mark.parametrize("argv, operations", [
    (["batch", "--image-uri", IMAGE, "--training-job", "j1", "--data", "s3://b/in"],
     ["ListObjectsV2", "DescribeTrainingJob", "CreateModel", "CreateTransformJob"]),
    (["deploy", "--image-uri", IMAGE, "--model-data", "s3://b/m.tar.gz", "--endpoint", "e1",
      "--serverless"], ["DescribeEndpoint", "CreateModel", "CreateEndpointConfig",
                        "CreateEndpoint"]),
    (["autoscale", "--endpoint", "e1", "--min", "1", "--max", "3", "--target-invocations", "100"],
     ["DescribeEndpoint", "DescribeEndpointConfig", "RegisterScalableTarget", "PutScalingPolicy"]),
    (["autoscale", "--endpoint", "e1", "--min", "0", "--max", "3", "--target-backlog", "4"],
     ["DescribeEndpoint", "DescribeEndpointConfig", "RegisterScalableTarget", "PutScalingPolicy",
      "PutScalingPolicy", "PutMetricAlarm"]),
])
def test_dry_run_prints_valid_hosting_requests(aws_env, capsys, argv, operations):
    assert main([*argv, *base_args(), "--dry-run"], client_factory=_no_clients) == 0
    reqs = json.loads(capsys.readouterr().out)
    assert [r["operation"] for r in reqs] == operations


def _enum_errors(shape, value, path="") -> list[str]:
    """Values outside the model's enums: botocore's own validator does not check enums."""
    if shape.type_name == "structure":
        return [e for k, v in value.items()
                for e in _enum_errors(shape.members[k], v, f"{path}.{k}")]
    if shape.type_name == "list":
        return [e for i, v in enumerate(value) for e in _enum_errors(shape.member, v, f"{path}[{i}]")]
    if shape.type_name == "map":
        return [e for k, v in value.items() for e in _enum_errors(shape.value, v, f"{path}[{k}]")]
    enum = getattr(shape, "enum", None)
    return [f"{path}={value!r}"] if enum and value not in enum else []


@pytest.mark.parametrize("argv", [
    ["batch", "--image-uri", IMAGE, "--model-data", "s3://b/m.tar.gz", "--data", "s3://b/in",
     "--instance-type", "ml.g4dn.xlarge", "--max-concurrent", "2", "--max-payload-mb", "10"],
    ["deploy", "--image-uri", IMAGE, "--model-data", "s3://b/m.tar.gz", "--endpoint", "e1",
     "--serverless", "--provisioned-concurrency", "1"],
    ["deploy", "--image-uri", IMAGE, "--model-data", "s3://b/m.tar.gz", "--endpoint", "e1",
     "--async", "--async-output", "s3://b/o", "--sns-success", "arn:aws:sns:us-west-2:1:t",
     "--max-concurrent-invocations", "2"],
    ["autoscale", "--endpoint", "e1", "--min", "1", "--max", "3", "--target-concurrency", "4"],
    ["autoscale", "--endpoint", "e1", "--min", "0", "--max", "3", "--target-backlog", "4"],
    ["cleanup", "--endpoint", "e1"],
])
def test_every_hosting_request_uses_values_the_pinned_botocore_knows(aws_env, capsys, argv):
    import botocore.session
    session = botocore.session.get_session()
    assert main([*argv, *base_args(), "--dry-run"], client_factory=_no_clients) == 0
    for r in json.loads(capsys.readouterr().out):
        shape = session.get_service_model(r["service"]).operation_model(r["operation"]).input_shape
        assert _enum_errors(shape, r["request"]) == [], r["operation"]


@pytest.mark.parametrize("code, message, missing", [
    ("ValidationException", 'Could not find endpoint "e".', True),
    ("ValidationException", "Model x does not exist.", True),
    ("NoSuchKey", "The specified key does not exist.", True),
    ("404", "Not Found", True),
    ("ObjectNotFoundException", "No scalable target", True),
    ("ValidationException", "Value 0 for MaxCapacity is invalid", False),
    ("AccessDenied", "Access Denied", False),
])
def test_is_not_found(code, message, missing):
    exc = ClientError({"Error": {"Code": code, "Message": message}}, "Op")
    assert is_not_found(exc) is missing


@pytest.mark.parametrize("mode", [[], ["--async"], ["--as-json"]])
def test_invoke_refuses_files_that_are_no_image_before_anything_is_sent(aws_env, capsys, mode):
    """A text file, an empty one, a directory or a typo among good images: exit 2 with one line
    and no client made (nothing uploaded, nothing invoked) - not a 400 per file, after the
    others went. A format Pillow identifies from its header (TIFF) and a .json body go."""
    from PIL import Image
    (aws_env / "a.jpg").write_bytes(tiny_jpeg())
    (aws_env / "notes.jpg").write_text("not an image\n")
    (aws_env / "empty.png").write_bytes(b"")
    (aws_env / "folder").mkdir()
    Image.new("RGB", (8, 8)).save(aws_env / "scan.tif")
    for bad, says in [("notes.jpg", "notes.jpg is not an image"), ("empty.png", "is empty"),
                      ("folder", "cannot read folder"), ("typo.jpg", "cannot read typo.jpg")]:
        assert main(["invoke", "a.jpg", bad, *mode, "--endpoint", "ep", *base_args()],
                    client_factory=_no_clients) == 2, bad
        assert says in _one_line_usage_error(capsys)
    assert main(["invoke", "scan.tif", *mode, "--endpoint", "ep", *base_args(), "--dry-run"],
                client_factory=_no_clients) == 0
    assert "InvokeEndpoint" in capsys.readouterr().out
    # what the user says is JSON is sent as is
    assert main(["invoke", "notes.jpg", "--content-type", "application/json", "--endpoint", "ep",
                 *base_args(), "--dry-run"], client_factory=_no_clients) == 0
