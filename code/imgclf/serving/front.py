"""The HTTP front on the public port (aiohttp server + aiohttp client to MMS behind it).

MMS answers its own ``/ping`` with 200 as soon as its port is bound - before any worker has
loaded the model, and even when every worker is dead. SageMaker only reads the status code, so
it would route traffic to a model that is not there. The front owns the public port from the
first second and:

- answers ``/ping`` 503 until the server marks it ready (every worker READY in MMS's management
  API and a real prediction answered, see :meth:`Front.probe`), then 200 while at least one
  worker is READY there and its process is alive (MMS keeps listing workers READY whose process
  died and that it never restarts, measured with a model registered through the API);
- answers ``GET /execution-parameters`` (batch transform) itself;
- refuses ambiguous framing with 400 before anything is forwarded. aiohttp's parser (llhttp)
  already refuses Transfer-Encoding together with Content-Length, duplicate or invalid
  Content-Length, bad chunk sizes, over-long lines and more than ``MAX_HEADERS`` headers
  (``tests/test_serving_front.py`` sends each); the front adds nothing it would have to keep
  in step with the RFC;
- answers 415 / 406 JSON itself for a Content-Type the handler does not read or an ``Accept``
  it cannot produce (:mod:`imgclf.serving.content_types`, the handler's own checks): MMS would
  parse a form body into fields of its own, and the worker would find no body;
- refuses a body over the payload limit with 413 JSON before reading it (Content-Length; before
  ``100 Continue`` when the client waits for one), or as soon as a chunked body passes the
  limit; a body that does not arrive within ``body_timeout_s`` gets 408;
- decodes a gzip or deflate body (``Content-Encoding``, aiohttp's parser; the limit holds for
  the decoded size too) and forwards it decoded; any other coding is a 415 with
  ``Accept-Encoding``, compressed data that does not decode a 400;
- closes a keep-alive connection idle for ``KEEPALIVE_S``, and one whose request head has not
  all arrived by then;
- answers every refusal, aiohttp's own included (``Expect`` it cannot meet, a request target
  that is no path such as ``OPTIONS *``), as short JSON;
- batches ``/invocations``: requests that arrive while every worker is busy wait in a queue,
  and a worker that comes free gets the queue (up to ``max_batch_size`` requests, within MMS's
  request limit in bytes) as ONE MMS job, a bundle (:mod:`imgclf.serving.bundle`), predicted in
  one forward, each request answered with its own status and body. A lone request goes to MMS
  as it came. Right after a bundle is answered, the queue waits up to ``max_batch_delay`` for as
  many requests as were in the front then (the clients just answered sending their next ones);
  a request that finds the server idle is never delayed (:meth:`Front._wait_s`). One job more
  than the workers (``PREFETCH_JOBS``) may wait in MMS's queue;
- forwards to MMS (on a Unix socket, :class:`Upstream`) with a fresh body framing
  (Content-Length), hop-by-hop headers dropped; an upstream keep-alive connection that went
  stale while idle is retried once on a new one; anything unparseable from upstream is a 502
  JSON;
- on :meth:`Front.stop` stops accepting, lets requests in flight finish for a grace period,
  then returns (the server stops MMS after that).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
from dataclasses import dataclass

import aiohttp
import yarl
from aiohttp import web

from imgclf.serving import bundle, content_types
from imgclf.serving.errors import ServingError, error_doc

log = logging.getLogger("imgclf.serving.front")

MODEL_NAME = "model"
MAX_HEADERS = 100  # aiohttp's parser answers 400 past this many header lines
MAX_LINE = 8190  # request line and each header field (aiohttp's default, stated here on purpose)
MAX_HEAD = 64 * 1024  # all header lines together: aiohttp has no such limit (100 x 8 KB passes)
PING_TIMEOUT_S = 1.5  # SageMaker wants /ping within 2 s, batch transform too
# the Server header of every answer: aiohttp's default names its own and Python's versions
SERVER = "imgclf"
# an idle keep-alive connection, or one whose request head is still incomplete, is closed after
# this long: nginx's default, longer than the 60 s after which load balancers (ALB's default)
# drop idle connections, so the proxy in front closes first and never reuses one just closed
# here. aiohttp's own handler, built here rather than by web.TCPSite, would hold it 3630 s: a
# client that sent half a head held its connection for an hour
KEEPALIVE_S = 75.0
# request body codings accepted: aiohttp's parser decodes these two (br and zstd only where their
# libraries are installed, which the image does not), and the model gets the body decoded
DECODED_ENCODINGS = frozenset({"gzip", "deflate"})
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Expect"))
# jobs sent to MMS beyond one per worker: while a worker computes, the next batch already waits
# in MMS's queue, so the worker never idles while its last batch's clients send their next
# requests (measured on 2 CPUs, c=16: README "Batching")
PREFETCH_JOBS = 1
# not passed on from clients: hop-by-hop, the header that marks the front's own bundles, and
# Content-Encoding (what the front forwards is decoded)
DROP_HEADERS = HOP_BY_HOP | {bundle.TOKEN_HEADER.lower(), "content-encoding"}


def json_response(status: int, doc: dict) -> web.Response:
    return web.Response(status=status, text=json.dumps(doc), content_type="application/json")


def error(status: int, message: str) -> web.Response:
    return json_response(status, error_doc(status, message))


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER


def unsupported_coding(coding: str) -> web.Response:
    """415 for a request body in a coding the front does not decode (RFC 9110 15.5.16)."""
    resp = error(415, f"Content-Encoding {coding[:100]!r} is not accepted: send the body as it "
                      f"is, or compressed with gzip or deflate")
    resp.headers["Accept-Encoding"] = ", ".join(sorted(DECODED_ENCODINGS))
    return resp


def _error_triple(status: int, message: str) -> tuple[int, list, bytes]:
    """An error of the front's own, as :meth:`Front.upstream` returns MMS's answers."""
    return status, [], json.dumps(error_doc(status, message)).encode()


@dataclass
class _Pending:
    """A request waiting in the front's queue for the model."""

    headers: list[tuple[str, str]]
    body: bytes
    query: str
    future: asyncio.Future
    response_type: str = content_types.JSON  # what its Accept asked for: a 200's Content-Type

    # its part head and size in a bundle: worked out only for a request that waits in the queue
    @functools.cached_property
    def meta(self) -> dict:
        return {"headers": dict(self.headers)}

    @functools.cached_property
    def size(self) -> int:
        """Bytes it adds to a bundle."""
        return bundle.part_bytes(self.meta, self.body)


class Upstream:
    """One of MMS's two APIs, at ``http://host:port`` (TCP) or ``unix:/path`` (a Unix socket,
    MMS's ``Connector`` syntax), with its own keep-alive session."""

    def __init__(self, address: str):
        self.address = address.rstrip("/")
        unix = self.address.startswith("unix:")
        self.socket_path = self.address[len("unix:"):] if unix else None
        self._session: aiohttp.ClientSession | None = None

    def url(self, path: str) -> yarl.URL:
        """``path`` (already encoded, with its query if any) on this API."""
        return yarl.URL(("http://localhost" if self.socket_path else self.address) + path,
                        encoded=True)

    def get(self, path: str, **kw):
        return self.session.get(self.url(path), **kw)

    def post(self, path: str, **kw):
        return self.session.post(self.url(path), **kw)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            kw = dict(limit=0, keepalive_timeout=30)
            connector = (aiohttp.UnixConnector(self.socket_path, **kw) if self.socket_path
                         else aiohttp.TCPConnector(**kw))
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class JsonErrorHandler(web.RequestHandler):
    """aiohttp's connection handler with its parse errors (the 400s for bad framing) answered as
    short JSON like every other error here, instead of text that quotes the client's bytes."""

    def log_exception(self, *args, **kw) -> None:
        # aiohttp reads on past a response to drain the body, and logs the body's own error again
        # with a traceback: compressed data that does not decode, already answered 400
        if isinstance(kw.get("exc_info"), web.RequestPayloadError):
            log.info("body of a refused request still undecodable while draining it: closed")
            return
        super().log_exception(*args, **kw)

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: a response is on its way already
            raise ConnectionError("response already started; cannot send the error")
        if status >= 500:
            log.error("error handling a request", exc_info=exc)
            reason = "internal error"
        else:  # llhttp's first line, without the quoted client bytes after it
            reason = (message or "bad request").split("\n", 1)[0].split(": b'", 1)[0]
            reason = reason.rstrip(": ")[:200]
            log.info("refused a malformed request from %s: %s", request.remote, reason)
        if isinstance(exc, aiohttp.http_exceptions.ContentEncodingError):
            # a coding the parser knows but cannot decode here (br, zstd: no library installed)
            resp = unsupported_coding(request.headers.get("Content-Encoding", ""))
        else:
            resp = error(status, reason)
        resp.headers["Server"] = SERVER  # these bypass the app (and its on_response_prepare)
        resp.force_close()
        return resp


class Front:
    def __init__(self, inference: str, management: str, max_body: int, workers: int,
                 timeout_s: float, body_timeout_s: float = 30, model_name: str = MODEL_NAME,
                 live_workers=None, max_batch_size: int = 1, max_batch_delay_ms: float = 0,
                 bundle_token: str = ""):
        self.inference = Upstream(inference)  # MMS's: unix:/path or http://127.0.0.1:PORT
        self.management = Upstream(management)
        self.max_body = max_body
        self.workers = workers
        self.timeout_s = timeout_s
        self.body_timeout_s = body_timeout_s
        self.model_name = model_name
        # how many worker processes are alive now (None: trust MMS's list alone)
        self.live_workers = live_workers
        self.ready = False
        self.in_flight = 0
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.grace_s = 30.0
        self.keepalive_s = KEEPALIVE_S
        # batching (see submit): requests waiting, bundles in flight (at most one per worker)
        self.max_batch_size = max_batch_size if bundle_token else 1
        self.max_batch_delay_s = max_batch_delay_ms / 1000
        self.bundle_token = bundle_token
        self.bundle_limit = bundle.request_limit(max_body, self.max_batch_size, MAX_HEAD)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._busy = 0
        self._expected = 1  # the company to wait for: the last bundle's requests + those queued
        self._last_done = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self._routes: dict[str, list[str]] = {}  # path -> methods, filled by app()

    @classmethod
    def from_settings(cls, s, workers: int, inference: str, management: str,
                      live_workers=None, bundle_token: str = "") -> "Front":
        """The front ``serve`` runs (``s``: :class:`imgclf.serving.settings.ServerSettings`;
        ``inference``, ``management``: MMS's addresses, ``unix:/path`` or ``http://host:port``)."""
        return cls(inference, management,
                   s.max_payload_bytes, workers, s.timeout_s, s.body_timeout_s,
                   live_workers=live_workers, max_batch_size=s.max_batch_size,
                   max_batch_delay_ms=s.max_batch_delay_ms, bundle_token=bundle_token)

    # ------------------------------------------------------------------------- upstream
    async def worker_states(self) -> list[dict]:
        """MMS's workers of the model, ``[{"id", "status", ...}]``; [] when unknown."""
        timeout = aiohttp.ClientTimeout(total=PING_TIMEOUT_S)
        try:
            async with self.management.get(f"/models/{self.model_name}", timeout=timeout) as r:
                if r.status != 200:
                    return []
                doc = await r.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return []
        if isinstance(doc, list):  # MMS 1.1 describes a model as a one-element list
            doc = doc[0] if doc else {}
        return list(doc.get("workers") or []) if isinstance(doc, dict) else []

    async def ready_workers(self) -> list[dict]:
        return [w for w in await self.worker_states() if str(w.get("status")).upper() == "READY"]

    async def probe(self, body: bytes, content_type: str) -> bool:
        """One real prediction through MMS. MMS lists a worker READY as soon as its socket
        connects, before the model load it sent has returned (measured: 6.7 s early), and a worker
        still loading takes no requests: a 200 here means a worker has the model loaded."""
        try:
            async with self.inference.post(f"/predictions/{self.model_name}", data=body,
                                           headers={"Content-Type": content_type},
                                           timeout=aiohttp.ClientTimeout(total=5)) as r:
                await r.read()
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def register(self, model_url: str, workers: int) -> None:
        """Register the model through MMS's management API, with its response timeout and MMS
        batch size 1 (the front batches: :mod:`imgclf.serving.bundle` says why). Returns once
        MMS accepted it; the workers load in the background (``synchronous=false``)."""
        params = {"url": model_url, "model_name": self.model_name, "initial_workers": str(workers),
                  "batch_size": "1", "synchronous": "false",
                  "response_timeout": str(int(self.timeout_s))}
        async with self.management.post("/models", params=params,
                                        timeout=aiohttp.ClientTimeout(total=60)) as r:
            text = await r.text()
            if r.status >= 300:
                raise RuntimeError(f"MMS refused the model registration: {r.status} {text[:300]}")

    async def upstream(self, headers: list[tuple[str, str]], body: bytes, query: str = ""
                       ) -> tuple[int, list[tuple[str, str]], bytes]:
        """POST to the model's predictions API: ``(status, end-to-end headers, body)``; an error
        of our own (502/504 JSON) when MMS can't be reached or answers nonsense."""
        # MMS only routes /invocations to a model named at its start; ours is registered through
        # the management API, so requests go to its predictions API
        path = f"/predictions/{self.model_name}" + (f"?{query}" if query else "")
        timeout = aiohttp.ClientTimeout(total=self.timeout_s + 10)
        for attempt in (1, 2):
            try:
                async with self.inference.post(path, headers=headers, data=body, timeout=timeout,
                                               allow_redirects=False) as r:
                    data = await r.read()
                    return r.status, [(k, v) for k, v in r.headers.items()
                                      if k.lower() not in HOP_BY_HOP], data
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                # an idle keep-alive connection MMS closed meanwhile: once more on a new one
                if attempt == 1:
                    log.info("upstream connection failed (%s): retrying once", type(e).__name__)
                    continue
                log.warning("model server unreachable: %s", e)
                return _error_triple(502, "model server unavailable")
            except asyncio.TimeoutError:
                return _error_triple(504, f"no answer from the model within {self.timeout_s:.0f} s")
            except aiohttp.ClientResponseError as e:  # unparseable status line or headers
                log.warning("bad response from the model server: %s", e)
                return _error_triple(502, "bad response from the model server")
            except aiohttp.ClientError as e:
                log.warning("model server failed: %s", e)
                return _error_triple(502, "model server unavailable")
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------- batching
    async def submit(self, headers: list[tuple[str, str]], body: bytes, query: str,
                     response_type: str = content_types.JSON) -> web.Response:
        """One request for the model: its answer. A request that finds a worker free and no
        company to wait for goes to MMS at once, from the task that received it; others wait in
        the queue for a bundle (:meth:`_dispatch`)."""
        loop = asyncio.get_running_loop()
        p = _Pending(headers, body, query, loop.create_future(), response_type)
        self._queue.append(p)
        if len(self._queue) == 1 and self._job_free() and self._wait_s(loop.time()) == 0:
            self._queue.popleft()
            self._busy += 1
            await self._run([p])  # what _dispatch would do with it, without a task of its own
        else:
            self._dispatch()
        return await p.future

    def _job_free(self) -> bool:
        """Whether MMS may take one more job now (one per worker, ``PREFETCH_JOBS`` more)."""
        return self._busy < self.workers + PREFETCH_JOBS

    def _wait_s(self, now: float) -> float:
        """How long the queue should wait for company before it goes: 0 once it holds as many
        requests as were in the front when the last bundle was answered (that bundle's and
        those queued then), or when the server has been idle for longer than the batch delay (a
        request that finds the server idle is never delayed); else what is left of the delay
        since the last answer, while the clients just answered send their next requests."""
        if len(self._queue) >= self._expected:
            return 0.0
        return max(0.0, self._last_done + self.max_batch_delay_s - now)

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and self._job_free():
            wait = self._wait_s(loop.time())
            if wait > 0:
                if self._timer is None:
                    self._timer = loop.call_later(wait, self._on_timer)
                return
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            batch = self._take()
            if batch:
                self._busy += 1
                task = loop.create_task(self._run(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _take(self) -> list["_Pending"]:
        """The oldest queued requests, at most ``max_batch_size`` of them and a bundle of at most
        :func:`imgclf.serving.bundle.request_limit` bytes (one request always fits: it goes as
        it came); requests whose client went away are dropped."""
        batch, size = [], 0
        while self._queue and len(batch) < self.max_batch_size:
            p = self._queue[0]
            if p.future.done():  # cancelled: the client disconnected while it waited
                self._queue.popleft()
                continue
            if batch and size + p.size > self.bundle_limit:
                break
            batch.append(self._queue.popleft())
            size += p.size
        return batch

    async def _run(self, batch: list["_Pending"]) -> None:
        try:
            if len(batch) == 1:
                p = batch[0]
                answers = [await self.upstream(p.headers, p.body, p.query)]
            else:
                answers = await self._bundle(batch)
            for p, (status, headers, data) in zip(batch, answers):
                if not p.future.done():
                    # the workers set no Content-Type (see imgclf.serving.transformer on MMS's
                    # reply decoder): a 200 is what the request's Accept asked for, every error
                    # (the handler's, MMS's own) is JSON
                    headers = [h for h in headers if h[0].lower() != "content-type"]
                    ctype = p.response_type if status == 200 else content_types.JSON
                    p.future.set_result(web.Response(
                        status=status, body=data, headers=[*headers, ("Content-Type", ctype)]))
        except Exception as e:  # noqa: BLE001 - never leave a client waiting
            log.exception("batch of %d failed in the front", len(batch))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
        finally:
            self._busy -= 1
            self._last_done = asyncio.get_running_loop().time()
            # the clients just answered are likely to send again, and those queued are here
            self._expected = min(self.max_batch_size, len(batch) + len(self._queue))
            self._dispatch()

    async def _bundle(self, batch: list["_Pending"]) -> list[tuple[int, list, bytes]]:
        body = bundle.encode([(p.meta, p.body) for p in batch])
        headers = [("Content-Type", bundle.CONTENT_TYPE), (bundle.TOKEN_HEADER, self.bundle_token)]
        status, out_headers, data = await self.upstream(headers, body)
        if status == 200:
            try:
                parts = bundle.decode(data)
                if len(parts) == len(batch):
                    return [(int(meta.get("status", 500)), [], part) for meta, part in parts]
                log.error("bundle of %d answered with %d parts", len(batch), len(parts))
            except ValueError as e:
                log.error("bundle answer unreadable: %s", e)
            status, out_headers, data = _error_triple(502, "bad response from the model server")
        # MMS's own error (a worker died, a timeout) or ours: every request of the bundle gets it
        return [(status, out_headers, data)] * len(batch)

    # -------------------------------------------------------------------------- routes
    async def ping(self, request: web.Request) -> web.Response:
        if not self.ready:
            return json_response(503, {"status": "Starting", "detail": "model workers are loading"})
        n = len(await self.ready_workers())
        if self.live_workers is not None:
            n = min(n, self.live_workers())
        doc = {"status": "Healthy" if n else "Unhealthy", "workers": n}
        return json_response(200 if n else 503, doc)

    async def execution_parameters(self, request: web.Request) -> web.Response:
        """What batch transform asks before it starts sending records."""
        return json_response(200, {"MaxConcurrentTransforms": self.workers,
                                   "BatchStrategy": "SINGLE_RECORD",
                                   "MaxPayloadInMB": self.max_body // 2**20})

    def refusal(self, request: web.Request) -> web.Response | None:
        """What ``/invocations`` refuses from the head alone, before reading any of the body: a
        Content-Length over the limit (413), a Content-Encoding it does not decode (415)."""
        if request.content_length is not None and request.content_length > self.max_body:
            return error(413, f"body of {request.content_length} bytes is over the limit of "
                              f"{self.max_body} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
        # one header, one coding: aiohttp decodes only the last of several headers, and no list
        codings = request.headers.getall("Content-Encoding", [])
        if codings and (len(codings) > 1
                        or codings[0].lower() not in DECODED_ENCODINGS | {"identity"}):
            return unsupported_coding(", ".join(codings))
        return None

    async def read_body(self, request: web.Request) -> bytes | web.Response:
        """The body (decoded, if it came gzip or deflate), or the error that answers it."""
        limit = self.max_body
        parts, total = [], 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                async for chunk in request.content.iter_any():
                    total += len(chunk)
                    if total > limit:
                        return error(413, f"body is over the limit of {limit} bytes "
                                          f"(SAGEMAKER_MAX_PAYLOAD_IN_MB)")
                    parts.append(chunk)
        except TimeoutError:
            return error(408, f"the request body did not arrive within {self.body_timeout_s:g} s")
        except aiohttp.http_exceptions.HttpProcessingError as e:  # bad chunk framing mid-body
            return error(400, f"malformed body: {e.message}")
        except web.RequestPayloadError as e:  # compressed data that does not decode
            reason = getattr(e.__cause__, "message", None) or "it does not decode"
            return error(400, f"malformed body: {reason}")
        except ConnectionError:  # the client went away mid-body: nobody to answer
            log.info("client %s closed its connection before its body arrived", request.remote)
            return error(400, "connection closed before the body arrived")
        return b"".join(parts)

    async def expect(self, request: web.Request) -> web.Response | None:
        """aiohttp's handling of ``Expect`` (``100 Continue`` on HTTP/1.1, nothing on 1.0), with
        an expectation it cannot meet answered 417 JSON rather than aiohttp's text."""
        value = request.headers.get("Expect", "")
        if value.lower() != "100-continue":
            return self._closing(error(417, f"cannot meet Expect {value[:100]!r}; only "
                                            f"100-continue is understood"))
        if request.version == aiohttp.HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # as aiohttp's own: the response has not started
        return None

    async def expect_body(self, request: web.Request) -> web.Response | None:
        """``/invocations``: a body the head alone refuses is refused now, instead of the client
        being told to send it (curl waits for 100 Continue before larger bodies)."""
        refused = self.refusal(request)
        return self._closing(refused) if refused else await self.expect(request)

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        refused = self.refusal(request)
        if refused:
            return self._closing(refused)
        body = await self.read_body(request)
        if isinstance(body, web.Response):
            return self._closing(body)
        # the handler's own type checks, here too: MMS parses a form body (curl -d, -F) into
        # fields of its own, and the worker would see no body at all
        try:
            content_types.request_kind(request.headers.get("Content-Type"))
            response_type = content_types.negotiate(request.headers.get("Accept"))
        except ServingError as e:
            return error(e.status, e.message)
        if not self.ready:
            return error(503, "model workers are still loading; retry when /ping answers 200")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in DROP_HEADERS]
        return await self.submit(headers, body, request.raw_path.partition("?")[2],
                                 response_type)

    async def not_found(self, request: web.Request) -> web.Response:
        """404 for an unknown path; 405 with ``Allow`` for a known one asked with another
        method (``GET /invocations``, ``POST /ping``)."""
        allowed = self._routes.get(request.path)
        if allowed:
            resp = error(405, f"{request.path} answers {', '.join(allowed)}, not "
                              f"{request.method}")
            resp.headers["Allow"] = ", ".join(allowed)
            return self._closing(resp)
        endpoints = ", ".join(f"{methods[0]} {path}" for path, methods in self._routes.items())
        return self._closing(error(404, f"no such endpoint {request.method} {request.path}; "
                                        f"this server answers {endpoints}"))

    @staticmethod
    def _closing(resp: web.Response) -> web.Response:
        resp.force_close()  # the unread rest of the body must not be parsed as a request
        return resp

    @web.middleware
    async def count(self, request: web.Request, handler):
        head = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        if head > MAX_HEAD:
            return self._closing(error(400, f"request head of {head} bytes is over the limit of "
                                            f"{MAX_HEAD} bytes"))
        self.in_flight += 1
        try:
            return await handler(request)
        except web.HTTPException as e:
            # aiohttp's own refusals, e.g. 404 for a target that is no path (OPTIONS *,
            # CONNECT host:443): JSON like every other answer here
            if e.status < 400:
                raise
            return await self.not_found(request) if e.status == 404 else self._closing(
                error(e.status, e.reason))
        finally:
            self.in_flight -= 1

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.count], client_max_size=self.max_body)
        app.on_response_prepare.append(_server_header)
        app.router.add_get("/ping", self.ping, expect_handler=self.expect)  # and HEAD (no body)
        app.router.add_get("/execution-parameters", self.execution_parameters,
                           expect_handler=self.expect)
        app.router.add_post("/invocations", self.proxy, expect_handler=self.expect_body)
        # path -> its methods as registered above (GET before the HEAD that mirrors it), for
        # the 405's Allow and the 404's list; the catch-all below is not one of them
        self._routes = {r.get_info()["path"]: sorted((x.method for x in r),
                                                     key=lambda m: m == "HEAD")
                        for r in app.router.resources()}
        app.router.add_route("*", "/{tail:.*}", self.not_found, expect_handler=self.expect)
        return app

    # ---------------------------------------------------------------------- lifecycle
    async def start(self, host: str, port: int, grace_s: float) -> None:
        self.grace_s = grace_s
        # shutdown_timeout: what aiohttp's own shutdown still waits once stop() has drained
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1,
                                     handle_signals=False)
        await self._runner.setup()
        manager, loop = self._runner.server, asyncio.get_running_loop()
        # web.TCPSite would serve aiohttp's own RequestHandler; the same manager with ours (the
        # manager still tracks every connection, so the runner's shutdown sees them)
        self._listener = await loop.create_server(
            lambda: JsonErrorHandler(manager, loop=loop, access_log=None, max_headers=MAX_HEADERS,
                                     max_line_size=MAX_LINE, max_field_size=MAX_LINE,
                                     keepalive_timeout=self.keepalive_s),
            host, port, reuse_address=True)

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to the grace period), close.

        The drain is ours, before aiohttp's shutdown: that one stops reading from open
        connections at once, so a request whose body was still arriving would time out."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if self._listener is not None:
            self._listener.close()  # no new connections; open ones finish their requests
        if self.in_flight:
            log.info("draining %d request(s) in flight", self.in_flight)
        while self.in_flight and loop.time() - t0 < self.grace_s:
            await asyncio.sleep(0.05)
        if self.in_flight:
            log.warning("%d request(s) still in flight after %g s: closing", self.in_flight,
                        self.grace_s)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.inference.close()
        await self.management.close()
        log.info("front stopped after %.1f s of draining", loop.time() - t0)
