"""The one client of the serving contract's ``/invocations`` (HTTP or SageMaker InvokeEndpoint).

Users: ``smctl invoke``, ``smctl evaluate --url/--endpoint``, the demo, ``make local-invoke``
(and local batch transform). Two ways to send:

- :meth:`InvocationsClient.predict`: images batched into JSON requests
  ``{"instances": [base64, ...], "topk": K}`` that stay within the serving payload limit and
  image count (:mod:`imgclf.serving.settings`, the server's own defaults), several requests in
  flight, the ``predictions`` of each answer matched back to its images. A batch the server
  refuses with 4xx is split into one request per image, so one bad file costs only itself.
- :meth:`InvocationsClient.send_raw`: one file per request, body = the file's bytes,
  Content-Type from the file; status + body per file (what a batch transform needs).

Both retry 5xx answers and connection errors (``retries`` times, exponential backoff).
Threads, not asyncio: boto3's InvokeEndpoint blocks, and a thread pool serves both transports
the same way (stdlib ``urllib`` for HTTP; nothing to install).

    client = InvocationsClient(HttpTransport("http://127.0.0.1:8080"), concurrency=4)
    for item in client.predict([("a.jpg", data)], topk=3): print(item.key, item.predictions)
"""

from __future__ import annotations

import base64
import http
import itertools
import json
import mimetypes
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from imgclf.serving import settings as serving_settings
from imgclf.serving.content_types import CUSTOM_ATTRIBUTES_HEADER, JSON
from smctl.errors import ConfigError, SmctlError

#: Serving defaults (SAGEMAKER_MAX_PAYLOAD_IN_MB, IMGCLF_MAX_IMAGES): what a request must fit.
MAX_PAYLOAD_BYTES = serving_settings.DEFAULT_MAX_PAYLOAD_MB * 1024 * 1024
MAX_IMAGES = serving_settings.DEFAULT_MAX_IMAGES
#: The server caps top-k at its number of classes, so this asks for the whole probability vector.
ALL_CLASSES = 1_000_000
RETRIES = 3

_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"),
          (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


def sniffed_type(data: bytes) -> str | None:
    """The image type the first bytes show (JPEG, PNG, GIF, BMP, WebP), else None."""
    for magic, ctype in _MAGIC:
        if data.startswith(magic):
            return ctype
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def content_type_for(path: Path | str, data: bytes) -> str:
    """The file's media type: sniffed from its first bytes, else from its name."""
    guessed, _ = mimetypes.guess_type(Path(path).name)
    return sniffed_type(data) or guessed or "application/x-image"


def invocations_url(url: str) -> str:
    """``http://host:port`` -> ``http://host:port/invocations``; a URL with a path is kept."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"bad --url {url!r}", "use e.g. http://127.0.0.1:8080")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/invocations")
    return urllib.parse.urlunsplit(parts)


# ----------------------------------------------------------------------------- transports
@dataclass
class Response:
    status: int             # 0: --dry-run, nothing was sent
    body: bytes
    content_type: str = ""
    exc: Exception | None = None  # the AWS error behind a non-2xx InvokeEndpoint answer

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def detail(self, limit: int = 300) -> str:
        """The server's short reason: the JSON ``error`` field, else the body's first words."""
        text = self.body.decode("utf-8", "replace")
        try:
            doc = json.loads(text)
            if isinstance(doc, dict) and doc.get("error"):
                text = str(doc["error"])
        except ValueError:
            pass
        return " ".join(text.split())[:limit]


class TransportError(Exception):
    """The request did not get an answer (connection refused/reset, timeout)."""


def refused(transport, resp: Response) -> SmctlError:
    """A non-2xx answer to one request as smctl's one-line error."""
    if resp.exc is not None:
        from smctl.errors import explain
        return explain(resp.exc) or SmctlError(str(resp.exc))
    return SmctlError(f"{transport.name} answered {resp.status} {status_phrase(resp.status)}: "
                      f"{resp.detail()}", "check the image/content type; see the server's log")


def unreachable(e: TransportError) -> SmctlError:
    return SmctlError(str(e), "is the server running? (make local-serve / make serve-host)")


class HttpTransport:
    """POST to a server's ``/invocations`` (a container, ``make serve-host``, local mode)."""

    def __init__(self, url: str, timeout: float = 70.0, api=None):
        self.url = invocations_url(url)
        self.timeout = timeout
        self.api = api  # only for --dry-run: records the request instead of sending it

    @property
    def name(self) -> str:
        return self.url

    def headers(self, content_type: str, custom_attributes: str | None) -> dict[str, str]:
        h = {"Content-Type": content_type, "Accept": JSON}
        if custom_attributes:
            h[CUSTOM_ATTRIBUTES_HEADER] = custom_attributes
        return h

    def send(self, body: bytes, content_type: str, custom_attributes: str | None = None) -> Response:
        if self.api is not None and self.api.dry_run:
            self.api.record("http", method="POST", url=self.url,
                            headers=self.headers(content_type, custom_attributes), body=body)
            return Response(0, b"")
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers=self.headers(content_type, custom_attributes))
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return Response(resp.status, resp.read(), resp.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as e:
            return Response(e.code, e.read(), e.headers.get("Content-Type", "") if e.headers else "")
        except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
            raise TransportError(f"cannot reach {self.url}: {getattr(e, 'reason', e)}") from None


class EndpointTransport:
    """sagemaker-runtime InvokeEndpoint through smctl's :class:`~smctl.aws.Api` (its client
    factory, so tests validate every request with botocore's Stubber). A ``ModelError`` (the
    container answered non-2xx) becomes that answer's status and body; throttling and service
    errors are retried by botocore's standard retry mode already."""

    def __init__(self, api, endpoint_name: str):
        self.api = api
        self.endpoint_name = endpoint_name

    @property
    def name(self) -> str:
        return f"endpoint {self.endpoint_name}"

    def send(self, body: bytes, content_type: str, custom_attributes: str | None = None) -> Response:
        from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError
        params = dict(EndpointName=self.endpoint_name, ContentType=content_type, Accept=JSON,
                      Body=body)
        if custom_attributes:
            params["CustomAttributes"] = custom_attributes
        try:
            resp = self.api.call("sagemaker-runtime", "invoke_endpoint", **params)
        except ClientError as e:
            err = e.response.get("Error", {})
            if err.get("Code") == "ModelError":
                status = int(e.response.get("OriginalStatusCode") or 424)
                message = e.response.get("OriginalMessage") or err.get("Message", "")
                return Response(status, str(message).encode(), exc=e)
            raise
        except BotoConnectionError as e:
            raise TransportError(f"cannot reach {self.name}: {e}") from None
        if resp is None:  # --dry-run: validated and recorded, nothing sent
            return Response(0, b"")
        return Response(200, resp["Body"].read(), resp.get("ContentType", ""))


# ----------------------------------------------------------------------------- the client
@dataclass
class Item:
    """What :meth:`InvocationsClient.predict` yields per image: ``prediction`` is the server's
    entry for it (``label``, ``index``, ``probability``, ``topk``), or ``error`` says why not
    (``status``: the HTTP status behind it; None when the file was not sent)."""

    key: Any
    prediction: dict | None = None
    error: str | None = None
    status: int | None = None


@dataclass
class RawResult:
    path: Path
    status: int | None      # None: no answer (see error)
    body: bytes
    content_type: str = ""
    error: str | None = None


def json_body(blobs: Sequence[bytes], topk: int | None) -> bytes:
    doc: dict[str, Any] = {"instances": [base64.b64encode(b).decode("ascii") for b in blobs]}
    if topk is not None:
        doc["topk"] = topk
    return json.dumps(doc).encode()


def _b64_len(n: int) -> int:
    return 4 * ((n + 2) // 3)


class InvocationsClient:
    def __init__(self, transport, concurrency: int = 4, retries: int = RETRIES,
                 backoff_s: float = 0.5, max_payload_bytes: int = MAX_PAYLOAD_BYTES,
                 max_images: int = MAX_IMAGES, log: Callable[[str], None] | None = None):
        if concurrency < 1:
            raise ConfigError("--concurrency must be >= 1")
        self.transport = transport
        self.concurrency = concurrency
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.max_payload_bytes = max_payload_bytes
        self.max_images = max(1, max_images)
        self.log = log or (lambda msg: None)
        self._lock = threading.Lock()
        self.requests_sent = 0

    # -- one request, retried -------------------------------------------------------------
    def send(self, body: bytes, content_type: str, custom_attributes: str | None = None) -> Response:
        """One request; 5xx answers and connection errors are retried ``retries`` times.
        Raises :class:`TransportError` when the last try got no answer."""
        for attempt in range(self.retries + 1):
            with self._lock:
                self.requests_sent += 1
            try:
                resp = self.transport.send(body, content_type, custom_attributes)
                if resp.status < 500 or attempt == self.retries:
                    return resp
                why = f"{resp.status} {resp.detail(120)}"
            except TransportError as e:
                if attempt == self.retries:
                    raise
                why = str(e)
            self.log(f"retrying {self.transport.name} ({why})")
            time.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    # -- batches of JSON --------------------------------------------------------------------
    def batches(self, sizes: Sequence[int], batch_size: int | None = None,
                topk: int | None = ALL_CLASSES) -> list[list[int]]:
        """Indices grouped into requests of at most ``batch_size`` (and the server's image
        limit) images whose JSON body stays within the payload limit. An image too big to go
        alone gets a group of its own (and is not sent: see :meth:`too_big`)."""
        per = min(batch_size or self.max_images, self.max_images)
        overhead = len(json_body([], topk))
        groups: list[list[int]] = []
        current: list[int] = []
        size = overhead
        for i, n in enumerate(sizes):
            cost = _b64_len(n) + 4  # quotes, comma, space
            if current and (len(current) >= per or size + cost > self.max_payload_bytes):
                groups.append(current)
                current, size = [], overhead
            current.append(i)
            size += cost
        if current:
            groups.append(current)
        return groups

    def too_big(self, n_bytes: int, topk: int | None = ALL_CLASSES) -> bool:
        return len(json_body([], topk)) + _b64_len(n_bytes) + 4 > self.max_payload_bytes

    def _predict_group(self, keys: list, blobs: list[bytes], topk: int | None,
                       custom_attributes: str | None) -> list[Item]:
        resp = self.send(json_body(blobs, topk), JSON, custom_attributes)
        if resp.status == 0:  # dry run
            return [Item(k) for k in keys]
        if resp.ok:
            try:
                preds = json.loads(resp.body)["predictions"]
            except (ValueError, KeyError, TypeError):
                preds = None
            if not isinstance(preds, list) or len(preds) != len(blobs):
                raise SmctlError(f"{self.transport.name} answered without one prediction per "
                                 f"image: {resp.detail(200)}")
            return [Item(k, prediction=p, status=resp.status) for k, p in zip(keys, preds)]
        if resp.status == 400 and len(blobs) > 1:
            # one bad image refuses the whole batch: ask per image to learn which
            return [item for k, b in zip(keys, blobs)
                    for item in self._predict_group([k], [b], topk, custom_attributes)]
        if resp.status == 413 and len(blobs) > 1:
            half = len(blobs) // 2  # the server's limits are lower than ours: halve
            return (self._predict_group(keys[:half], blobs[:half], topk, custom_attributes)
                    + self._predict_group(keys[half:], blobs[half:], topk, custom_attributes))
        return [Item(k, error=f"HTTP {resp.status}: {resp.detail()}", status=resp.status)
                for k in keys]

    def predict(self, images: Iterable[tuple[Any, bytes | Path]], topk: int | None = ALL_CLASSES,
                batch_size: int | None = None, custom_attributes: str | None = None,
                progress: Callable[[int], None] | None = None) -> Iterator[Item]:
        """Predict ``(key, image bytes or file path)`` pairs (files are read when their batch
        goes, so a big folder is never all in memory); yields one :class:`Item` per image as
        batches complete, in input order (requests in flight: ``concurrency``). Connection
        failures after the retries raise :class:`TransportError`."""
        images = list(images)
        sizes = []
        for _, src in images:
            try:
                sizes.append(len(src) if isinstance(src, (bytes, bytearray)) else
                             Path(src).stat().st_size)
            except OSError:
                sizes.append(0)  # reported when read
        groups = self.batches(sizes, batch_size, topk)

        def run(group: list[int]) -> list[Item]:
            out: list[Item | None] = [None] * len(group)
            sent, keys, blobs = [], [], []
            for n, i in enumerate(group):
                key, src = images[i]
                try:
                    data = bytes(src) if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
                except OSError as e:
                    out[n] = Item(key, error=f"cannot read: {e.strerror}")
                    continue
                if self.too_big(len(data), topk):
                    mb = self.max_payload_bytes / 2 ** 20
                    out[n] = Item(key, error=f"{len(data) / 2**20:.1f} MB file: over the {mb:.0f} "
                                             f"MB payload limit once base64-encoded")
                    continue
                sent.append(n)
                keys.append(key)
                blobs.append(data)
            if blobs:
                for n, item in zip(sent, self._predict_group(keys, blobs, topk, custom_attributes)):
                    out[n] = item
            return out

        with ThreadPoolExecutor(self.concurrency) as pool:
            for items in pool.map(run, groups):
                if progress:
                    progress(len(items))
                yield from items

    # -- one file per request -----------------------------------------------------------------
    def iter_raw(self, paths: Iterable[Path | str], custom_attributes: str | None = None,
                 content_type: str | None = None) -> Iterator[RawResult]:
        """Each file as its own request (body = its bytes, Content-Type from the file unless
        given), at most ``concurrency`` in flight; yields each file's status and body as it
        completes (not in ``paths`` order). Files are read when their request goes, so a big
        folder is never all in memory; leaving the loop early (Ctrl-C) cancels what has not
        been sent and waits only for the requests in flight."""
        def one(path: Path) -> RawResult:
            try:
                data = path.read_bytes()
            except OSError as e:
                return RawResult(path, None, b"", error=f"cannot read: {e.strerror}")
            try:
                r = self.send(data, content_type or content_type_for(path, data), custom_attributes)
            except TransportError as e:
                return RawResult(path, None, b"", error=str(e))
            return RawResult(path, r.status, r.body, r.content_type)

        pending = iter(Path(p) for p in paths)
        pool = ThreadPoolExecutor(self.concurrency)
        in_flight: set = set()
        try:
            for path in itertools.islice(pending, self.concurrency):
                in_flight.add(pool.submit(one, path))
            while in_flight:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    nxt = next(pending, None)
                    if nxt is not None:
                        in_flight.add(pool.submit(one, nxt))
                    yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def send_raw(self, paths: Iterable[Path | str], custom_attributes: str | None = None,
                 content_type: str | None = None) -> list[RawResult]:
        """:meth:`iter_raw` collected, in ``paths`` order."""
        paths = [Path(p) for p in paths]
        order = {p: i for i, p in enumerate(paths)}
        return sorted(self.iter_raw(paths, custom_attributes, content_type),
                      key=lambda r: order[r.path])


def status_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""
