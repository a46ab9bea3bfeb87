"""A bundle: several ``/invocations`` requests as ONE multi-model-server job, and their answers
as one reply. The front (:mod:`imgclf.serving.front`) gathers concurrent requests into a bundle;
the worker (:mod:`imgclf.serving.transformer`) predicts all of them in one forward and answers
each with its own status and body.

Why not MMS's own batching (``batch_size`` at registration): its delay is fixed when the model is
registered, so it either waits for company when a lone request finds the server idle, or misses
the company under load (measured, README "Batching"); and MMS 1.1.11's decoder of a worker's
reply to a batch reads each answer's status code without checking that its 4 bytes have arrived,
so a reply split across socket reads at that spot kills the worker and fails the whole batch with
500 "Worker died." (seen at 4 concurrent clients: ``IndexOutOfBoundsException: readerIndex(1022) +
length(4) exceeds writerIndex(1024)`` in ``ModelResponseDecoder``). A bundle is one request and
one answer to MMS, so none of that applies.

Wire format, both ways: one JSON line that lists the parts, then the parts' bytes back to back::

    {"parts": [{"length": 1234, "headers": {"Content-Type": "image/jpeg"}}, ...]}\\n<part 0><part 1>...

A request part carries its client's end-to-end headers; an answer part ``{"status": 200}``.
The worker takes a body as a bundle only with the ``X-Imgclf-Bundle`` header equal to the token
``serve`` puts in the workers' environment (``IMGCLF_BUNDLE_TOKEN``); the front drops that header
from clients, so no client can send one.
"""

from __future__ import annotations

import hmac
import json
import os
from typing import Mapping

from imgclf.serving import content_types

CONTENT_TYPE = "application/x-imgclf-bundle"
TOKEN_HEADER = "X-Imgclf-Bundle"
TOKEN_ENV = "IMGCLF_BUNDLE_TOKEN"

Part = tuple[dict, bytes]  # (headers or {"status": ...}, body)


def _json(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def encode(parts: list[Part]) -> bytes:
    head = _json({"parts": [{**meta, "length": len(body)} for meta, body in parts]})
    return b"".join([head, b"\n", *(bytes(body) for _, body in parts)])


def part_bytes(meta: dict, body: bytes) -> int:
    """What one part adds to an encoded bundle (at most: the length field is counted wide)."""
    return len(_json(meta)) + len(',"length":') + 20 + 1 + len(body)


def request_limit(max_payload: int, max_parts: int, max_head: int) -> int:
    """The largest bundle the front sends, MMS's ``max_request_size``: bodies up to the payload
    limit together, each part's headers (a head of ``max_head`` bytes is at most twice that as
    UTF-8 JSON), and the head line's frame."""
    return max_payload + max_parts * 2 * max_head + 4096


def decode(data: bytes | bytearray) -> list[Part]:
    """The parts of a bundle; ValueError if it is not one."""
    data = bytes(data)
    end = data.find(b"\n")
    if end < 0:
        raise ValueError("no bundle head line")
    try:
        metas = json.loads(data[:end])["parts"]
    except (ValueError, KeyError, TypeError):
        metas = None
    if not isinstance(metas, list):
        raise ValueError('bundle head is not {"parts": [...]}')
    out, pos = [], end + 1
    for meta in metas:
        n = meta.pop("length", None) if isinstance(meta, dict) else None
        if not isinstance(n, int) or n < 0 or pos + n > len(data):
            raise ValueError("bundle part length missing or past the end")
        out.append((meta, data[pos:pos + n]))
        pos += n
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} bytes after the last bundle part")
    return out


def is_bundle(headers: Mapping[str, str] | None, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a request with these headers is a bundle from this server's front."""
    token = environ.get(TOKEN_ENV, "")
    if not token:
        return False
    sent = content_types.header(headers, TOKEN_HEADER) or ""
    return hmac.compare_digest(sent.encode(), token.encode())
