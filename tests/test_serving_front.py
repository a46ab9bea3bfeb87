"""The front (imgclf.serving.front) in-process, in front of small upstreams that misbehave the
ways MMS can: a keep-alive connection closed while idle, an unparseable status line, no server.
The framing corpus and draining against the real MMS are in test_serving_server.py."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib

import aiohttp
import pytest
from aiohttp import web

from imgclf.serving import bundle
from imgclf.serving.front import Front
from imgclf.serving.settings import ServerSettings
from smctl.local.runner import free_port

MB = 2**20


def nowhere() -> str:
    """An address with no server behind it."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(params=["tcp", "unix"])
def unix_path(request, tmp_path):
    """Where a stand-in upstream listens: a Unix socket as ``serve`` runs MMS, or loopback TCP
    (its fallback) for None."""
    return str(tmp_path / "mms.sock") if request.param == "unix" else None


class RawUpstream:
    """An asyncio TCP server answering each connection's first request with ``answer``. Then
    ``close_after``: it closes the connection; else it keeps it open and drops the connection
    when the next request arrives on it, unanswered - a keep-alive connection the server timed out
    just as the client reused it (the client only learns it is stale by sending on it)."""

    def __init__(self, answer: bytes, close_after: bool = True, unix_path: str | None = None):
        self.answer, self.close_after, self.unix_path = answer, close_after, unix_path
        self.connections = 0
        self.requests = 0

    async def handle(self, reader, writer):
        self.connections += 1
        # requests answered on THIS connection; a count keyed by id(writer) took a new
        # connection for stale when its writer reused the id of a closed one's
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if answered >= 1:
                    writer.transport.abort()  # stale: reset, no answer
                    return
                answered += 1
                self.requests += 1
                writer.write(self.answer)
                await writer.drain()
                if self.close_after:
                    await asyncio.sleep(0.05)
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    async def __aenter__(self):
        if self.unix_path:  # as serve runs MMS (imgclf.serving.server.mms_addresses)
            self.server = await asyncio.start_unix_server(self.handle, self.unix_path)
            self.address = f"unix:{self.unix_path}"
        else:
            self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            self.address = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()


OK = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
      b"Connection: keep-alive\r\n\r\n{\"ok\": true}")


async def with_front(upstream: str, fn, ready: bool = True, management: str = "", **kw):
    """A front with MMS's APIs at ``upstream`` and ``management`` (unix:/path or http://...;
    nothing listening there by default), running ``fn`` (:func:`serve_front`)."""
    front = Front(upstream, management or nowhere(), kw.pop("max_body", MB), workers=2,
                  timeout_s=5, **kw)
    front.ready = ready
    return await serve_front(front, fn)


async def serve_front(front: Front, fn):
    """Start ``front`` on a free port, run ``fn(client, url)``, stop it."""
    port = free_port()
    await front.start("127.0.0.1", port, grace_s=2)
    try:
        async with aiohttp.ClientSession() as client:
            return await fn(client, f"http://127.0.0.1:{port}")
    finally:
        await front.stop()


async def post(client, url, body=b"x" * 10, **kw):
    async with client.post(url + "/invocations", data=body,
                           headers={"Content-Type": "image/jpeg"}, **kw) as r:
        return r.status, await r.text()


def test_stale_upstream_connection_is_retried_once(unix_path):
    async def main():
        async with RawUpstream(OK, close_after=False, unix_path=unix_path) as up:
            async def calls(client, url):
                first = await post(client, url)
                second = await post(client, url)  # the pooled upstream connection drops it
                return first, second
            first, second = await with_front(up.address, calls)
            return first, second, up.connections, up.requests
    first, second, connections, requests = asyncio.run(main())
    assert first == (200, '{"ok": true}') and second == (200, '{"ok": true}')
    assert connections == 2 and requests == 2  # the second one answered on a new connection


@pytest.mark.parametrize("answer", [b"HTTP/1.1 abc OK\r\n\r\n", b"garbage\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"])
def test_unparseable_upstream_answer_is_a_502_json(answer, unix_path):
    async def main():
        async with RawUpstream(answer, close_after=True, unix_path=unix_path) as up:
            return await with_front(up.address, post)
    status, text = asyncio.run(main())
    assert status == 502 and json.loads(text) == {"error": json.loads(text)["error"], "status": 502}


def test_no_upstream_is_a_502_json_and_the_front_keeps_serving(unix_path):
    async def calls(client, url):
        out = [await post(client, url)]
        async with client.get(url + "/execution-parameters") as r:
            out.append((r.status, await r.json()))
        return out
    # no socket file / no listener
    upstream = f"unix:{unix_path}" if unix_path else nowhere()
    (status, text), (ep_status, doc) = asyncio.run(with_front(upstream, calls))
    assert status == 502 and json.loads(text)["status"] == 502
    assert ep_status == 200 and doc["MaxConcurrentTransforms"] == 2


def test_not_ready_is_503_and_unknown_paths_404():
    async def calls(client, url):
        a = await post(client, url)
        async with client.get(url + "/ping") as r:
            b = r.status, await r.json()
        async with client.get(url + "/models") as r:
            c = r.status, await r.json()
        return a, b, c
    (a_status, a_text), (b_status, b_doc), (c_status, c_doc) = asyncio.run(
        with_front(nowhere(), calls, ready=False))
    assert a_status == 503 and "loading" in json.loads(a_text)["error"]
    assert b_status == 503 and b_doc["status"] == "Starting"
    assert c_status == 404 and c_doc["status"] == 404  # MMS's management routes are not public


def test_head_answers_like_get_and_a_known_path_with_another_method_is_405():
    async def calls(client, url):
        out = {}
        for method, path in [("GET", "/ping"), ("HEAD", "/ping"),
                             ("GET", "/execution-parameters"), ("HEAD", "/execution-parameters"),
                             ("GET", "/invocations"), ("POST", "/ping"),
                             ("PUT", "/execution-parameters"), ("HEAD", "/models")]:
            async with client.request(method, url + path) as r:
                out[method, path] = r.status, r.headers.get("Allow"), await r.read()
        return out
    out = asyncio.run(with_front(nowhere(), calls, ready=False))
    for path in ("/ping", "/execution-parameters"):  # GET's status, no body
        status, _, body = out["GET", path]
        assert body and out["HEAD", path] == (status, None, b""), path
    assert out["GET", "/ping"][0] == 503 and out["GET", "/execution-parameters"][0] == 200
    for key, allow in [(("GET", "/invocations"), "POST"), (("POST", "/ping"), "GET, HEAD"),
                       (("PUT", "/execution-parameters"), "GET, HEAD")]:
        status, allowed, body = out[key]
        assert (status, allowed) == (405, allow), key
        assert json.loads(body) == {"error": f"{key[1]} answers {allow}, not {key[0]}",
                                    "status": 405}
    assert out["HEAD", "/models"][:2] == (404, None)


@pytest.mark.parametrize("env,expect", [
    ({}, {"MaxConcurrentTransforms": 3, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 6}),
    ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"}, {"MaxPayloadInMB": 20}),
    ({"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "50"}, {"MaxPayloadInMB": 50}),
    ({"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "250"}, {"MaxPayloadInMB": 100}),
])
def test_execution_parameters_normal_and_batch_mode(monkeypatch, env, expect):
    for k in ("SAGEMAKER_BATCH", "SAGEMAKER_MAX_PAYLOAD_IN_MB", "SAGEMAKER_MODEL_SERVER_TIMEOUT",
              "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = ServerSettings.from_env()
    assert s.timeout_s == (600 if env.get("SAGEMAKER_BATCH") else 60)
    front = Front.from_settings(s, 3, nowhere(), nowhere())

    async def call(client, url):
        async with client.get(url + "/execution-parameters") as r:
            return r.status, await r.json()

    status, doc = asyncio.run(serve_front(front, call))
    assert status == 200 and doc == {**doc, **expect} and set(doc) == {
        "MaxConcurrentTransforms", "BatchStrategy", "MaxPayloadInMB"}
    assert front.max_body == doc["MaxPayloadInMB"] * MB


def test_ping_needs_ready_workers_in_mms_and_live_worker_processes():
    """MMS keeps listing a worker READY after its process died (and never restarts it when the
    listener died): /ping also asks how many worker processes are alive."""
    ready = json.dumps([{"modelName": "model", "workers": [{"id": "9000", "status": "READY"}]}])
    answer = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
              f"{len(ready)}\r\n\r\n{ready}").encode()

    async def ping(client, url):
        async with client.get(url + "/ping") as r:
            return r.status, await r.json()

    async def main(live: int):
        async with RawUpstream(answer, close_after=True) as management:
            return await with_front(nowhere(), ping, management=management.address,
                                    live_workers=lambda: live)
    assert asyncio.run(main(1)) == (200, {"status": "Healthy", "workers": 1})
    assert asyncio.run(main(0)) == (503, {"status": "Unhealthy", "workers": 0})


# ------------------------------------------------------------------------------- batching
TOKEN = "t0ken"


class BundleUpstream:
    """A stand-in for MMS + one worker, over real HTTP: one job at a time (``workers`` of them),
    each taking ``forward_s``; a bundle (:mod:`imgclf.serving.bundle`) is answered part by part:
    ``b"bad..."`` parts with 400, others with 200 and their own body echoed. Records each job
    (how many requests it carried, when it arrived, the headers it saw)."""

    def __init__(self, forward_s: float = 0.1, workers: int = 1, status: int = 200):
        self.forward_s, self.status = forward_s, status
        self.jobs: list[tuple[int, float, dict]] = []
        self.lock = asyncio.Semaphore(workers)

    @staticmethod
    def answer_one(body: bytes) -> tuple[int, bytes]:
        if body.startswith(b"bad"):
            return 400, json.dumps({"error": "bad image", "status": 400}).encode()
        return 200, json.dumps({"echo": body.decode()}).encode()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        is_bundle = bundle.is_bundle(headers, {bundle.TOKEN_ENV: TOKEN})
        parts = bundle.decode(body) if is_bundle else [({"headers": headers}, body)]
        self.jobs.append((len(parts) if is_bundle else 1, asyncio.get_running_loop().time(),
                          headers))
        async with self.lock:
            await asyncio.sleep(self.forward_s)
        if self.status != 200:
            return web.json_response({"code": self.status, "message": "Worker died."},
                                     status=self.status)
        if not is_bundle:
            status, out = self.answer_one(body)
            return web.Response(status=status, body=out)
        answers = [self.answer_one(part) for _, part in parts]
        return web.Response(body=bundle.encode([({"status": st}, out) for st, out in answers]))

    async def __aenter__(self):
        app = web.Application(client_max_size=64 * MB)
        app.router.add_route("POST", "/predictions/model", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


def batching_front(up: BundleUpstream, workers: int = 1, delay_ms: float = 50,
                   max_batch: int = 8, max_body: int = MB) -> Front:
    front = Front(f"http://127.0.0.1:{up.port}", nowhere(), max_body,
                  workers=workers, timeout_s=10, max_batch_size=max_batch,
                  max_batch_delay_ms=delay_ms, bundle_token=TOKEN)
    front.ready = True
    return front


async def post_all(client, url, bodies, headers=None):
    async def one(body):
        async with client.post(url + "/invocations", data=body, headers={
                "Content-Type": "image/jpeg", **(headers or {})}) as r:
            return r.status, r.headers.get("Content-Type"), await r.json()
    return await asyncio.gather(*(one(b) for b in bodies))


def test_concurrent_requests_share_jobs_and_each_gets_its_own_answer():
    """20 at once, one bad among them, one worker: after the first (it finds the worker idle and
    goes alone) they go as bundles of at most max_batch; every client gets its own body and
    status, the bad one alone fails."""
    bodies = [b"bad-7" if i == 7 else f"img-{i}".encode() for i in range(20)]

    async def main():
        async with BundleUpstream(forward_s=0.3) as up:  # long: all 20 are queued meanwhile
            out = await serve_front(batching_front(up, max_batch=8),
                                    lambda client, url: post_all(client, url, bodies))
            return out, [n for n, _, _ in up.jobs]
    results, jobs = asyncio.run(main())
    for body, (status, ctype, doc) in zip(bodies, results):
        assert ctype == "application/json"
        if body == b"bad-7":
            assert status == 400 and doc["status"] == 400
        else:
            assert (status, doc) == (200, {"echo": body.decode()})
    assert sum(jobs) == 20 and max(jobs) <= 8 and jobs[0] == 1, jobs
    assert len(jobs) <= 5, jobs  # e.g. 1 + 1 (sent while the first computes) + 8 + 8 + 2


def test_a_request_that_finds_the_server_idle_is_not_delayed():
    """A long batch delay (2 s) costs nothing to lone requests, one after another, nor to one
    that comes after a bundle once the delay has passed: each reaches the model at once."""
    async def main():
        async with BundleUpstream(forward_s=0.02) as up:
            async def calls(client, url):
                loop = asyncio.get_running_loop()
                lone = []
                for i in range(3):
                    t0 = loop.time()
                    await post_all(client, url, [f"one-{i}".encode()])
                    lone.append(loop.time() - t0)
                await post_all(client, url, [f"b-{i}".encode() for i in range(6)])
                await asyncio.sleep(2.2)
                t0 = loop.time()
                await post_all(client, url, [b"after"])
                return lone, loop.time() - t0
            out = await serve_front(batching_front(up, delay_ms=2000), calls)
            return out, [n for n, _, _ in up.jobs]
    (lone, after), jobs = asyncio.run(main())
    assert max(lone) < 1.0 and after < 1.0, (lone, after)
    assert jobs[:3] == [1, 1, 1] and jobs[-1] == 1 and sum(jobs) == 10


def test_right_after_a_bundle_the_queue_waits_for_its_clients_to_come_back():
    """8 clients in a closed loop: answered together, they send their next requests a little
    apart; the front waits (up to the delay) for all 8 instead of sending the first alone."""
    async def main():
        async with BundleUpstream(forward_s=0.05) as up:
            async def client_loop(client, url, i):
                for r in range(4):
                    await asyncio.sleep(0.005 * i)  # the clients come back spread over 35 ms
                    await post_all(client, url, [f"c{i}-r{r}".encode()])

            async def calls(client, url):
                await asyncio.gather(*(client_loop(client, url, i) for i in range(8)))
            # a delay far longer than the clients take to come back (35 ms), even on a slow host
            await serve_front(batching_front(up, delay_ms=1000, max_batch=8), calls)
            return [n for n, _, _ in up.jobs]
    jobs = asyncio.run(main())
    assert sum(jobs) == 32 and sum(n for n in jobs if n >= 7) >= 21, jobs


def test_bundles_respect_the_byte_limit_and_a_client_cannot_forge_one():
    big = b"x" * 700_000  # two: over what a bundle of 2 under a 1 MB payload limit may carry

    async def main():
        async with BundleUpstream(forward_s=0.1) as up:
            async def calls(client, url):
                await post_all(client, url, [b"first"])  # then a warm upstream connection
                return await post_all(client, url, [big + bytes([65 + i]) for i in range(3)],
                                      headers={bundle.TOKEN_HEADER: TOKEN})
            out = await serve_front(batching_front(up, max_body=MB, max_batch=2), calls)
            return out, up.jobs
    results, jobs = asyncio.run(main())
    assert [s for s, _, _ in results] == [200, 200, 200]
    assert [doc["echo"][-1] for _, _, doc in results] == ["A", "B", "C"]
    assert [n for n, _, _ in jobs] == [1, 1, 1, 1]  # one per job, 1.4 MB > 1.3 MB
    # the client's own X-Imgclf-Bundle header never reaches the model
    assert all(bundle.TOKEN_HEADER.lower() not in {k.lower() for k in h} for _, _, h in jobs)


def test_a_failed_bundle_fails_each_of_its_requests_with_the_model_servers_answer():
    async def main():
        async with BundleUpstream(forward_s=0.1, status=503) as up:
            return await serve_front(batching_front(up), lambda client, url: post_all(
                client, url, [f"img-{i}".encode() for i in range(5)]))
    results = asyncio.run(main())
    assert [s for s, _, _ in results] == [503] * 5
    assert all(doc["message"] == "Worker died." for _, _, doc in results)



# --------------------------------------------------------------------- heads, codings, idling
async def connect(url: str):
    """A raw connection to the front at ``url`` (``http://host:port``): ``(reader, writer)``."""
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def raw_request(url: str, data: bytes, wait_s: float = 5) -> bytes:
    """``data`` sent on a new connection: all the front answers until it closes it."""
    reader, writer = await connect(url)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), wait_s)
    finally:
        writer.close()


def invocation(*headers: str, body: bytes = b"") -> bytes:
    return ("POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            + "".join(h + "\r\n" for h in headers)
            + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


HEAD_REFUSALS = {  # name: (request, status)
    "options_asterisk": (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "connect_authority": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", 404),
    "expect_unknown": (invocation("Expect: 200-ok", body=b"abc"), 417),
    "expect_unknown_on_ping": (b"GET /ping HTTP/1.1\r\nHost: x\r\nExpect: x\r\n\r\n", 417),
    "coding_unknown": (invocation("Content-Encoding: foo", body=b"abc"), 415),
    "coding_br_no_library": (invocation("Content-Encoding: br", body=b"abc"), 415),
    "coding_list": (invocation("Content-Encoding: gzip, gzip",
                               body=gzip.compress(gzip.compress(b"abc"))), 415),
    "coding_twice": (invocation("Content-Encoding: gzip", "Content-Encoding: gzip",
                                body=gzip.compress(gzip.compress(b"abc"))), 415),
    "gzip_corrupt": (invocation("Content-Encoding: gzip", body=b"not gzip at all"), 400),
    "deflate_corrupt": (invocation("Content-Encoding: deflate", body=b"\x00" * 40), 400),
    "gzip_bomb": (invocation("Content-Encoding: gzip", body=gzip.compress(b"\0" * (2 * MB))),
                  413),
}


@pytest.mark.parametrize("name", sorted(HEAD_REFUSALS))
def test_refusals_of_aiohttp_and_of_codings_are_json_and_the_front_keeps_serving(name, caplog):
    data, expected = HEAD_REFUSALS[name]

    async def calls(client, url):
        raw = await raw_request(url, data)
        async with client.get(url + "/execution-parameters") as r:
            return raw, r.status

    with caplog.at_level(logging.INFO):
        raw, after = asyncio.run(with_front(nowhere(), calls))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(expected).encode(), raw[:300]
    assert b"application/json" in head and json.loads(body)["status"] == expected, raw[:300]
    assert len(body) < 300 and b"Traceback" not in body
    assert b"\r\nServer: imgclf\r\n" in head and b"aiohttp" not in head  # no versions named
    if expected == 415:  # RFC 9110 15.5.16: which codings would have been accepted
        assert b"\r\nAccept-Encoding: deflate, gzip" in head
    assert after == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize("coding,compress", [("gzip", gzip.compress), ("deflate", zlib.compress),
                                             ("GZip", gzip.compress), ("identity", bytes)])
def test_a_compressed_body_reaches_the_model_decoded_without_its_coding(coding, compress):
    async def main():
        async with BundleUpstream(forward_s=0) as up:
            front = Front(f"http://127.0.0.1:{up.port}", nowhere(), MB, workers=1, timeout_s=5)
            front.ready = True

            async def call(client, url):
                async with client.post(url + "/invocations", data=compress(b"img-1"), headers={
                        "Content-Type": "image/jpeg", "Content-Encoding": coding}) as r:
                    assert r.headers["Server"] == "imgclf"
                    return r.status, await r.json()
            return await serve_front(front, call), up.jobs
    (status, doc), jobs = asyncio.run(main())
    assert (status, doc) == (200, {"echo": "img-1"})
    assert "content-encoding" not in {k.lower() for k in jobs[0][2]}, jobs[0][2]


def test_expect_100_continue_refuses_an_oversized_body_before_it_is_sent():
    """curl sends ``Expect: 100-continue`` before larger bodies and waits: one over the limit
    is told 413 at once (no 100 Continue), one within it gets 100 Continue, then its answer."""
    async def main():
        async with BundleUpstream(forward_s=0) as up:
            front = Front(f"http://127.0.0.1:{up.port}", nowhere(), MB, workers=1, timeout_s=5)
            front.ready = True

            async def calls(client, url):
                reader, writer = await connect(url)
                writer.write((
                    "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                    f"Expect: 100-continue\r\nContent-Length: {MB + 1}\r\n\r\n").encode())
                # the answer, while the client still holds back its body (aiohttp lingers for
                # it a while before it closes)
                big = await asyncio.wait_for(reader.readuntil(b"}"), 5)
                writer.close()
                reader, writer = await connect(url)
                writer.write(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg"
                             b"\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
                interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                writer.write(b"img-2")
                final = await asyncio.wait_for(reader.readuntil(b"}"), 5)
                writer.close()
                return big, interim, final
            return await serve_front(front, calls)
    big, interim, final = asyncio.run(main())
    assert big.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in big, big[:200]
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200 ") and final.endswith(b'{"echo": "img-2"}')


def test_idle_connections_and_half_sent_heads_are_closed_after_the_keepalive():
    """aiohttp's handler as built here held both for 3630 s: a client sending half a head kept
    its connection (and a slot in SageMaker's pool of them) for an hour."""
    async def main():
        front = Front(nowhere(), nowhere(), MB, workers=1, timeout_s=5)
        front.keepalive_s = 0.5

        async def calls(client, url):
            loop = asyncio.get_running_loop()
            out = {}
            for name, data in [("idle", b""), ("half_head", b"POST /invocations HTTP/1.1\r\nHo"),
                               ("after_a_request", b"GET /execution-parameters HTTP/1.1\r\n"
                                                   b"Host: x\r\n\r\nGET /exec")]:
                t0 = loop.time()
                out[name] = await raw_request(url, data), loop.time() - t0
            return out
        return await serve_front(front, calls)
    out = asyncio.run(main())
    assert out["idle"][0] == b"" and out["half_head"][0] == b""
    answered, _ = out["after_a_request"]
    assert answered.startswith(b"HTTP/1.1 200 ") and answered.count(b"HTTP/1.1") == 1
    for name, (_, waited) in out.items():
        assert 0.4 < waited < 3, (name, waited)  # closed by the keep-alive, not the 5 s wait


def test_a_client_gone_mid_body_is_logged_without_a_traceback_and_the_front_keeps_serving(
        caplog):
    async def calls(client, url):
        _, writer = await connect(url)
        writer.write(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 1000\r\n\r\nabc")  # 3 bytes of 1000
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort()
        await asyncio.sleep(0.2)
        async with client.get(url + "/execution-parameters") as r:
            return r.status

    with caplog.at_level(logging.INFO):
        assert asyncio.run(with_front(nowhere(), calls)) == 200
    assert "closed its connection before its body arrived" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_each_request_of_a_bundle_gets_the_content_type_its_accept_asked_for():
    """A 200 is labelled with its own request's negotiated type (JSON Lines or JSON), an error
    always JSON - within one bundle too."""
    bodies = [b"bad-3" if i == 3 else f"img-{i}".encode() for i in range(8)]

    async def main():
        async with BundleUpstream(forward_s=0.3) as up:
            async def calls(client, url):
                async def one(i, body):
                    accept = "application/jsonlines" if i % 2 else "application/json"
                    async with client.post(url + "/invocations", data=body, headers={
                            "Content-Type": "image/jpeg", "Accept": accept}) as r:
                        return r.status, r.headers["Content-Type"]
                return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
            return await serve_front(batching_front(up), calls), [n for n, _, _ in up.jobs]
    results, jobs = asyncio.run(main())
    assert max(jobs) > 1, jobs  # some went as a bundle
    for i, (status, ctype) in enumerate(results):
        if i == 3:
            assert (status, ctype) == (400, "application/json")
        else:
            assert status == 200 and ctype == ("application/jsonlines" if i % 2
                                               else "application/json"), (i, ctype)
