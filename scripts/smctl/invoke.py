"""``smctl invoke``: send images to an endpoint (InvokeEndpoint) or a local server (``--url``).

One image goes as its raw bytes with the content type of the file (sniffed from the bytes,
then the extension); several images, or ``--as-json``, go as one JSON request
``{"instances": [base64, ...], "topk": K}``. Top-k also travels in the SageMaker custom
attributes header (``topk=K``), which the serving code reads for raw-image requests.

    smctl invoke dog.jpg --endpoint imgclf-dogs --top-k 3
    smctl invoke dog.jpg --url http://127.0.0.1:8080      # a local container or host server
"""

from __future__ import annotations

import base64
import json
import mimetypes
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from smctl import async_invoke
from smctl.aws import Api
from smctl.config import Settings, load_state
from smctl.errors import ConfigError, SmctlError
from smctl.util import print_table

JSON = "application/json"
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
#: SageMaker real-time InvokeEndpoint payload limit.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024

_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"),
          (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


def add_parser(sub, parents) -> None:
    p = sub.add_parser("invoke", parents=parents, help="classify image(s) with an endpoint or a "
                                                       "local server, print top-k")
    p.add_argument("images", nargs="+", type=Path, help="image file(s); a .json file is sent as is")
    p.add_argument("--endpoint", dest="endpoint_name", help="endpoint name (or endpoint_name setting)")
    p.add_argument("--url", help="POST to this server instead, e.g. http://127.0.0.1:8080 "
                                 "(/invocations is added when the URL has no path)")
    p.add_argument("--top-k", type=int, default=5, help="classes to return per image (default: 5)")
    p.add_argument("--content-type", help="override the content type (default: from the file)")
    p.add_argument("--as-json", action="store_true",
                   help="send base64 JSON {\"instances\": [...]} even for one image")
    p.add_argument("--raw", action="store_true", help="print the response body as received")
    p.add_argument("--timeout", type=float, default=70.0, help="--url: seconds (default: 70)")
    async_invoke.add_arguments(p)  # issue 11 (hosting): --async and its flags
    p.set_defaults(func=run_invoke)


def content_type_for(path: Path, data: bytes) -> str:
    for magic, ctype in _MAGIC:
        if data.startswith(magic):
            return ctype
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    guessed, _ = mimetypes.guess_type(path.name)
    if guessed:
        return guessed
    return "application/x-image"


def build_body(paths: list[Path], top_k: int, content_type: str | None, as_json: bool) -> tuple[bytes, str]:
    blobs = []
    for p in paths:
        try:
            blobs.append(p.read_bytes())
        except OSError as e:
            raise ConfigError(f"cannot read {p}: {e.strerror}") from None
    if len(paths) == 1 and not as_json:
        if content_type:
            return blobs[0], content_type
        return blobs[0], content_type_for(paths[0], blobs[0])
    if any(p.suffix.lower() == ".json" for p in paths):
        raise ConfigError("a .json body can only be sent alone")
    doc = {"instances": [base64.b64encode(b).decode("ascii") for b in blobs], "topk": top_k}
    return json.dumps(doc).encode(), JSON


def local_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise ConfigError(f"bad --url {url!r}", "use e.g. http://127.0.0.1:8080")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/invocations")
    return urllib.parse.urlunsplit(parts)


def post(url: str, body: bytes, content_type: str, top_k: int, timeout: float) -> tuple[bytes, str]:
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": content_type, "Accept": JSON,
        CUSTOM_ATTRIBUTES_HEADER: f"topk={top_k}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        detail = " ".join(e.read().decode("utf-8", "replace").split())[:300]
        raise SmctlError(f"{url} answered {e.code} {e.reason}: {detail}",
                         "check the image/content type; see the server's log") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SmctlError(f"cannot reach {url}: {reason}",
                         "is the server running? (docker compose up serve / the host server)") from None


def run_invoke(args, settings: Settings, api: Api) -> int:
    if args.async_mode:  # issue 11 (hosting): InvokeEndpointAsync through S3
        return async_invoke.run_async_invoke(args, settings, api)
    if args.top_k < 1:
        raise ConfigError("--top-k must be >= 1")
    body, ctype = build_body(args.images, args.top_k, args.content_type, args.as_json)
    if args.url:
        url = local_url(args.url)
        if api.dry_run:
            api.record("http", method="POST", url=url,
                       headers={"Content-Type": ctype, "Accept": JSON,
                                CUSTOM_ATTRIBUTES_HEADER: f"topk={args.top_k}"},
                       body=body)
            return 0
        answer, answer_type = post(url, body, ctype, args.top_k, args.timeout)
    else:
        endpoint = settings.endpoint_name or load_state().get("endpoint")
        if not endpoint:
            settings.require("endpoint_name", "endpoint to invoke")
        if len(body) > MAX_PAYLOAD_BYTES:
            raise ConfigError(f"request body is {len(body) / 2**20:.1f} MB, over SageMaker's 6 MB "
                              "real-time payload limit", "send fewer or smaller (resized) images")
        resp = api.call("sagemaker-runtime", "invoke_endpoint", EndpointName=endpoint,
                        ContentType=ctype, Accept=JSON, CustomAttributes=f"topk={args.top_k}",
                        Body=body)
        if resp is None:
            return 0
        answer, answer_type = resp["Body"].read(), resp.get("ContentType", "")
    return print_predictions(answer, args.images, raw=args.raw)


def print_predictions(answer: bytes, paths: list[Path], raw: bool = False, out=None) -> int:
    out = out or sys.stdout
    text = answer.decode("utf-8", "replace")
    try:
        doc: Any = json.loads(text)
    except ValueError:
        doc = None
    preds = doc.get("predictions") if isinstance(doc, dict) else None
    if raw or not isinstance(preds, list):
        print(text, file=out)
        return 0
    names = [p.name for p in paths] if len(paths) == len(preds) else \
        [f"image {i}" for i in range(len(preds))]
    for name, pred in zip(names, preds):
        top = pred.get("topk") or [pred]
        print(f"{name}:", file=out)
        print_table([[i + 1, t.get("label"), f"{float(t.get('probability', 0)):.4f}"]
                     for i, t in enumerate(top)], ["rank", "label", "probability"], out=out)
    return 0
