"""Request and response media types, ``Accept`` negotiation and SageMaker custom attributes."""

from __future__ import annotations

from imgclf.serving.errors import BadRequest, NotAcceptable, UnsupportedMediaType

JSON = "application/json"
#: one JSON object per line, one line per image: what SageMaker batch transform users ask for
#: with ``Accept`` (and ``AssembleWith=Line`` to join the records' answers into one file)
JSONLINES = "application/jsonlines"
OCTET_STREAM = "application/octet-stream"
X_IMAGE = "application/x-image"
JPEG = "image/jpeg"
PNG = "image/png"

#: Raw image bodies; the decoder sniffs the real format, so a PNG sent as image/jpeg still works.
IMAGE_TYPES = (JPEG, PNG, X_IMAGE, OCTET_STREAM)
REQUEST_TYPES = IMAGE_TYPES + (JSON,)
RESPONSE_TYPES = (JSON, JSONLINES)  # the first answers */* and application/*

CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"


def media_type(header: str | None) -> str:
    """``'Image/JPEG; charset=x'`` -> ``'image/jpeg'``; no header means octet-stream (sniffed)."""
    if not header:
        return OCTET_STREAM
    return header.split(";", 1)[0].strip().lower() or OCTET_STREAM


def request_kind(content_type: str | None) -> str:
    """``'image'`` or ``'json'`` for an accepted Content-Type, else 415."""
    mt = media_type(content_type)
    if mt == JSON or mt.endswith("+json"):
        return "json"
    if mt in IMAGE_TYPES or mt.startswith("image/"):
        return "image"
    raise UnsupportedMediaType(f"unsupported Content-Type {mt!r}; send one of "
                               f"{', '.join(REQUEST_TYPES)} (or any image/*)")


def negotiate(accept: str | None) -> str:
    """The response type for an ``Accept`` header (q-values honoured), else 406."""
    if not accept or not accept.strip():
        return JSON
    ranges = []
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        mt, q = fields[0].lower(), 1.0
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if mt:
            ranges.append((q, mt))
    for q, mt in sorted(ranges, key=lambda r: -r[0]):
        if q <= 0:
            continue
        for produced in RESPONSE_TYPES:
            major, _, _ = produced.partition("/")
            if mt in (produced, f"{major}/*", "*/*"):
                return produced
    raise NotAcceptable(f"cannot produce {accept.strip()!r}; this endpoint answers "
                        f"{', '.join(RESPONSE_TYPES)}")


def header(properties: dict | None, name: str) -> str | None:
    """Case-insensitive look-up in the request headers MMS hands the worker."""
    if not properties:
        return None
    lname = name.lower()
    for k, v in properties.items():
        if str(k).lower() == lname:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


def parse_topk(value, source: str) -> int:
    if isinstance(value, bool):
        raise BadRequest(f"{source} must be a positive integer, got {value!r}")
    try:
        k = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise BadRequest(f"{source} must be a positive integer, got {value!r}") from None
    if k < 1:
        raise BadRequest(f"{source} must be a positive integer, got {value!r}")
    return k


def topk_from_custom_attributes(attributes: str | None) -> int | None:
    """``topk=3`` (or ``top_k=3``) among ``;``/``,``-separated ``key=value`` pairs; else None."""
    if not attributes:
        return None
    for pair in attributes.replace(",", ";").split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip().lower() in ("topk", "top_k", "k"):
            return parse_topk(value, f"custom attribute {key.strip()}")
    return None
