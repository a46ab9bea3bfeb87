"""``smctl invoke``: send images to an endpoint (InvokeEndpoint) or a local server (``--url``).

One image goes as its raw bytes with the content type of the file (sniffed from the bytes,
then the extension); several images, or ``--as-json``, go as JSON requests
``{"instances": [base64, ...], "topk": K}`` batched within the payload limit, several in
flight (:mod:`smctl.client`, the one ``/invocations`` client). Top-k also travels in the
SageMaker custom attributes header (``topk=K``), which the serving code reads for raw-image
requests.

    smctl invoke dog.jpg --endpoint imgclf-dogs --top-k 3
    smctl invoke dog.jpg --url http://127.0.0.1:8080      # a local container or host server
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from smctl import async_invoke
from smctl.aws import Api
from smctl.client import (MAX_PAYLOAD_BYTES, EndpointTransport, HttpTransport, InvocationsClient,
                          TransportError, content_type_for, refused, sniffed_type, unreachable)
from smctl.config import Settings, load_state
from smctl.errors import ConfigError, EXIT_ERROR, SmctlError
from smctl.util import print_table


def add_transport_flags(p, endpoint_dest: str) -> None:
    """``--endpoint`` / ``--url`` / ``--timeout`` / ``--concurrency``, shared by invoke and evaluate."""
    p.add_argument("--endpoint", dest=endpoint_dest, metavar="NAME",
                   help="SageMaker endpoint name (sagemaker-runtime InvokeEndpoint)")
    p.add_argument("--url", help="POST to this server instead, e.g. http://127.0.0.1:8080 "
                                 "(/invocations is added when the URL has no path)")
    p.add_argument("--timeout", type=float, default=70.0, help="--url: seconds per request "
                                                               "(default: 70)")
    p.add_argument("--concurrency", type=int, default=4,
                   help="requests in flight (default: 4)")


def add_parser(sub, parents) -> None:
    p = sub.add_parser("invoke", parents=parents, help="classify image(s) with an endpoint or a "
                                                       "local server, print top-k")
    p.add_argument("images", nargs="+", type=Path, help="image file(s); a .json file is sent as is")
    add_transport_flags(p, "endpoint_name")
    p.add_argument("--top-k", type=int, default=5, help="classes to return per image (default: 5)")
    p.add_argument("--content-type", help="override the content type (default: from the file)")
    p.add_argument("--as-json", action="store_true",
                   help="send base64 JSON {\"instances\": [...]} even for one image")
    p.add_argument("--raw", action="store_true", help="print the response body as received")
    async_invoke.add_arguments(p)  # issue 11 (hosting): --async and its flags
    p.set_defaults(func=run_invoke)


def make_transport(args, api: Api, endpoint: str | None):
    if args.url:
        return HttpTransport(args.url, args.timeout, api=api)
    return EndpointTransport(api, endpoint)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None


def check_inputs(paths: list[Path], content_type: str | None) -> None:
    """Every file readable and, unless it goes as JSON, an image: anything else is refused
    (exit 2) before a request is sent or uploaded, instead of a 400 per file from the endpoint.
    Only the head of each file is read; whether the image decodes is still the server's call."""
    from PIL import Image, UnidentifiedImageError  # here: the other commands never need Pillow

    as_json = content_type is not None and "json" in content_type.lower()
    for path in paths:
        try:
            with path.open("rb") as f:
                head = f.read(16)
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        if as_json or path.suffix.lower() == ".json" or sniffed_type(head):
            continue
        if not head:
            raise ConfigError(f"{path} is empty", "give image files (JPEG, PNG, ...)")
        try:
            with Image.open(path):
                pass  # the header alone: a format Pillow knows (TIFF, ...)
        except UnidentifiedImageError:
            raise ConfigError(f"{path} is not an image (neither a JPEG/PNG/GIF/BMP/WebP "
                              f"signature nor a format Pillow identifies)",
                              "give image files, or a .json request body") from None
        except (OSError, ValueError, Image.DecompressionBombError):
            pass  # an image that Pillow refuses to open: the server answers for it


def run_invoke(args, settings: Settings, api: Api) -> int:
    if args.top_k < 1:
        raise ConfigError("--top-k must be >= 1")
    check_inputs(args.images, args.content_type)
    if args.async_mode:  # issue 11 (hosting): InvokeEndpointAsync through S3
        return async_invoke.run_async_invoke(args, settings, api)
    endpoint = None
    if not args.url:
        endpoint = settings.endpoint_name or load_state().get("endpoint")
        if not endpoint:
            settings.require("endpoint_name", "endpoint to invoke")
    transport = make_transport(args, api, endpoint)
    client = InvocationsClient(transport, concurrency=args.concurrency,
                               log=lambda m: print(f"smctl: {m}", file=sys.stderr))
    attributes = f"topk={args.top_k}"
    single = len(args.images) == 1 and (not args.as_json
                                         or args.images[0].suffix.lower() == ".json")
    if not single and any(p.suffix.lower() == ".json" for p in args.images):
        raise ConfigError("a .json body can only be sent alone")
    try:
        if single:
            return _invoke_one(client, args, attributes, endpoint is not None)
        return _invoke_batch(client, args, attributes)
    except TransportError as e:
        raise unreachable(e) from None


def _invoke_one(client: InvocationsClient, args, attributes: str, to_endpoint: bool) -> int:
    path = args.images[0]
    data = _read(path)
    if to_endpoint and len(data) > MAX_PAYLOAD_BYTES:
        raise ConfigError(f"request body is {len(data) / 2**20:.1f} MB, over SageMaker's "
                          f"{MAX_PAYLOAD_BYTES // 2**20} MB real-time payload limit",
                          "send fewer or smaller (resized) images")
    ctype = args.content_type or ("application/json" if path.suffix.lower() == ".json"
                                  else content_type_for(path, data))
    resp = client.send(data, ctype, attributes)
    if resp.status == 0:
        return 0
    if not resp.ok:
        raise refused(client.transport, resp)
    return print_predictions(resp.body, args.images, raw=args.raw)


def _invoke_batch(client: InvocationsClient, args, attributes: str) -> int:
    items = list(client.predict([(p, p) for p in args.images], topk=args.top_k,
                                custom_attributes=attributes))
    if all(it.prediction is None and it.error is None for it in items):
        return 0  # --dry-run
    failed = [it for it in items if it.error]
    if len(failed) == len(items) and len({it.error for it in failed}) == 1:
        raise SmctlError(f"{client.transport.name}: {failed[0].error}",
                         "check the images; see the server's log")
    doc = {"predictions": [it.prediction for it in items if it.prediction is not None]}
    print_predictions(json.dumps(doc).encode(), [it.key for it in items if it.prediction],
                      raw=args.raw)
    for it in failed:
        print(f"{it.key}: {it.error}", file=sys.stderr)
    return EXIT_ERROR if failed else 0


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
