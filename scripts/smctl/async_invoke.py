"""``smctl invoke --async FILE...``: one asynchronous request per file, through S3.

For each file: PutObject to ``s3://BUCKET/PREFIX/async-input/ENDPOINT/STAMP-ID/NAME``,
InvokeEndpointAsync with that ``InputLocation`` (same content type and ``topk`` custom
attribute as the synchronous path), then poll the ``OutputLocation`` object until it appears
(or the ``FailureLocation`` object: the request failed) and print the top-k from its body,
which is the same ``{"predictions": [...]}`` document a synchronous call returns.

    smctl invoke --async dog.jpg --endpoint imgclf-async --top-k 3
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from smctl.aws import Api
from smctl.config import Settings
from smctl.deploy import resolve_endpoint
from smctl.errors import ConfigError, SmctlError, is_not_found
from smctl.util import split_s3, timestamp

#: InvokeEndpointAsync: InvocationTimeoutSeconds 1-3600 (SageMaker's default 900).
MAX_INVOCATION_TIMEOUT_S = 3600


def add_arguments(p) -> None:
    """The ``--async`` flags of ``smctl invoke`` (the parser lives in invoke.py)."""
    g = p.add_argument_group("asynchronous endpoints (--async)")
    g.add_argument("--async", dest="async_mode", action="store_true",
                   help="upload each image to S3, call InvokeEndpointAsync, wait for the result")
    g.add_argument("--async-timeout", type=float, default=3600.0,
                   help="--async: seconds to wait for each result (default: 3600)")
    g.add_argument("--async-invocation-timeout", type=int,
                   help="--async: InvocationTimeoutSeconds, 1-3600, the time the model may take "
                        "(default: SageMaker's, 900)")
    g.add_argument("--async-poll", type=float, default=5.0,
                   help="--async: seconds between checks for the result (default: 5)")


def input_uri(settings: Settings, endpoint: str, path: Path) -> str:
    return settings.s3_uri("async-input", endpoint, f"{timestamp()}-{uuid.uuid4().hex[:8]}",
                           path.name)


def fetch(api: Api, uri: str) -> bytes | None:
    """The object's bytes, or None while it does not exist."""
    from botocore.exceptions import ClientError
    bucket, key = split_s3(uri)
    try:
        return api.call("s3", "get_object", Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        if is_not_found(e):
            return None
        raise


def wait_result(api: Api, output: str, failure: str | None, timeout: float,
                poll: float, clock=time.monotonic, sleep=time.sleep) -> bytes:
    deadline = clock() + timeout
    while True:
        body = fetch(api, output)
        if body is not None:
            return body
        if failure:
            error = fetch(api, failure)
            if error is not None:
                detail = " ".join(error.decode("utf-8", "replace").split())[:300]
                raise SmctlError(f"asynchronous request failed: {detail}",
                                 f"full error at {failure}; see CloudWatch logs "
                                 "/aws/sagemaker/Endpoints/ENDPOINT")
        if clock() >= deadline:
            raise SmctlError(f"no result at {output} after {timeout:g} s",
                             "the request may still be queued: check it later with "
                             f"'aws s3 cp {output} -', or raise --async-timeout")
        sleep(poll)


def run_async_invoke(args, settings: Settings, api: Api) -> int:
    from smctl.client import JSON, content_type_for
    from smctl.invoke import print_predictions

    if args.url:
        raise ConfigError("--async goes to a SageMaker endpoint, not --url",
                          "drop --url (local servers answer synchronously)")
    if args.as_json:
        raise ConfigError("--async sends each file as its own request; drop --as-json")
    t = args.async_invocation_timeout
    if t is not None and not 1 <= t <= MAX_INVOCATION_TIMEOUT_S:
        raise ConfigError(f"--async-invocation-timeout {t} is out of range",
                          "use 1 to 3600 seconds")
    endpoint = resolve_endpoint(settings, "endpoint to invoke")
    blobs = []  # smctl.invoke.check_inputs has found each readable and an image (or JSON)
    for path in args.images:
        try:
            blobs.append(path.read_bytes())
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    queued = []  # every request first, then the results: they run side by side on the endpoint
    for path, data in zip(args.images, blobs):
        ctype = args.content_type or content_type_for(path, data)
        uri = input_uri(settings, endpoint, path)
        bucket, key = split_s3(uri)
        api.call("s3", "put_object", Bucket=bucket, Key=key, Body=data, ContentType=ctype)
        kw: dict[str, Any] = {"EndpointName": endpoint, "InputLocation": uri, "ContentType": ctype,
                              "Accept": JSON, "CustomAttributes": f"topk={args.top_k}"}
        if t is not None:
            kw["InvocationTimeoutSeconds"] = t
        resp = api.call("sagemaker-runtime", "invoke_endpoint_async", **kw)
        if resp is None:  # dry run
            continue
        api.log(f"{path.name}: queued as {resp.get('InferenceId', '?')}, result at "
                f"{resp['OutputLocation']}")
        queued.append((path, resp))
    rc = 0
    for path, resp in queued:
        body = wait_result(api, resp["OutputLocation"], resp.get("FailureLocation"),
                           args.async_timeout, args.async_poll)
        rc = max(rc, print_predictions(body, [path], raw=args.raw))
    return rc
