"""Shared fixtures for the smctl tests: fake AWS credentials and botocore Stubbers.

Every stubbed client is a real botocore client (fake credentials, fixed region), so each request
smctl makes is validated against botocore's service model before the Stubber compares it with
the expected parameters. No request leaves the machine.
"""

from __future__ import annotations

import io
import json
from http.server import BaseHTTPRequestHandler

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

REGION = "us-west-2"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/imgclf-exec"
BUCKET = "test-bucket"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/imgclf-sagemaker:abc123"
RULE_IMAGE = f"895741380848.dkr.ecr.{REGION}.amazonaws.com/sagemaker-debugger-rules:latest"


class Stubs:
    """Client factory for ``smctl.cli.main``: one stubbed client per service."""

    def __init__(self):
        self.clients = {}
        self.stubbers = {}

    def __call__(self, service, region):
        assert region == REGION
        return self.client(service)

    def client(self, service):
        if service not in self.clients:
            c = boto3.client(service, region_name=REGION)
            self.clients[service] = c
            self.stubbers[service] = Stubber(c)
            self.stubbers[service].activate()
        return self.clients[service]

    def __getitem__(self, service) -> Stubber:
        self.client(service)
        return self.stubbers[service]

    def assert_done(self):
        for s in self.stubbers.values():
            s.assert_no_pending_responses()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials, a region, no config files, state in tmp; cwd = tmp_path."""
    for k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
              "SMCTL_CONFIG", "SMCTL_BUCKET", "SMCTL_ROLE_ARN", "SMCTL_IMAGE_URI",
              "SMCTL_ENDPOINT_NAME", "REGISTRY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("SMCTL_STATE", str(tmp_path / "smctl-state.json"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def stubs(aws_env):
    s = Stubs()
    yield s
    s.assert_done()


def base_args(*extra: str) -> list[str]:
    return ["--region", REGION, "--role-arn", ROLE, "--bucket", BUCKET, *extra]


def streaming(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


def dry_run_requests(out: str) -> list[dict]:
    return json.loads(out)


def tiny_jpeg(color=(200, 30, 30), size=(32, 24)) -> bytes:
    from PIL import Image
    img = Image.new("RGB", size, color)
    for x in range(size[0]):  # some texture so truncation leaves data undecoded
        img.putpixel((x, x % size[1]), (x * 7 % 255, 90, 180))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def tiny_png(color=(20, 120, 220), size=(16, 16)) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


class JsonHandler(BaseHTTPRequestHandler):
    """Request handler base for the stand-in servers: quiet, answers JSON with ``send_json``."""

    def log_message(self, *a):
        pass

    def send_json(self, status: int, doc) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
