"""The front (imgclf.serving.front) in-process, in front of small upstreams that misbehave the
ways MMS can: a keep-alive connection closed while idle, an unparseable status line, no server.
The framing corpus and draining against the real MMS are in test_serving_server.py."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest

from imgclf.serving.front import Front
from imgclf.serving.settings import ServerSettings

MB = 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RawUpstream:
    """An asyncio TCP server answering each connection's first request with ``answer``. Then
    ``close_after``: it closes the connection; else it keeps it open and drops the connection
    when the next request arrives on it, unanswered - a keep-alive connection the server timed out
    just as the client reused it (the client only learns it is stale by sending on it)."""

    def __init__(self, answer: bytes, close_after: bool = True):
        self.answer, self.close_after = answer, close_after
        self.connections = 0
        self.requests = 0

    async def handle(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if self.requests_on(writer) >= 1:
                    writer.transport.abort()  # stale: reset, no answer
                    return
                self._count[id(writer)] = self.requests_on(writer) + 1
                self.requests += 1
                writer.write(self.answer)
                await writer.drain()
                if self.close_after:
                    await asyncio.sleep(0.05)
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    def requests_on(self, writer) -> int:
        return self._count.get(id(writer), 0)

    async def __aenter__(self):
        self._count = {}
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()


OK = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n"
      b"Connection: keep-alive\r\n\r\n{\"ok\": true}")


async def with_front(upstream_port: int, fn, ready: bool = True, management_port: int = 0, **kw):
    front = Front(f"http://127.0.0.1:{upstream_port}",
                  f"http://127.0.0.1:{management_port or free_port()}",
                  kw.pop("max_body", MB), workers=2, timeout_s=5, **kw)
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


def test_stale_upstream_connection_is_retried_once():
    async def main():
        async with RawUpstream(OK, close_after=False) as up:
            async def calls(client, url):
                first = await post(client, url)
                second = await post(client, url)  # the pooled upstream connection drops it
                return first, second
            first, second = await with_front(up.port, calls)
            return first, second, up.connections, up.requests
    first, second, connections, requests = asyncio.run(main())
    assert first == (200, '{"ok": true}') and second == (200, '{"ok": true}')
    assert connections == 2 and requests == 2  # the second one answered on a new connection


@pytest.mark.parametrize("answer", [b"HTTP/1.1 abc OK\r\n\r\n", b"garbage\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"])
def test_unparseable_upstream_answer_is_a_502_json(answer):
    async def main():
        async with RawUpstream(answer, close_after=True) as up:
            return await with_front(up.port, post)
    status, text = asyncio.run(main())
    assert status == 502 and json.loads(text) == {"error": json.loads(text)["error"], "status": 502}


def test_no_upstream_is_a_502_json_and_the_front_keeps_serving():
    async def calls(client, url):
        out = [await post(client, url)]
        async with client.get(url + "/execution-parameters") as r:
            out.append((r.status, await r.json()))
        return out
    (status, text), (ep_status, doc) = asyncio.run(with_front(free_port(), calls))
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
        with_front(free_port(), calls, ready=False))
    assert a_status == 503 and "loading" in json.loads(a_text)["error"]
    assert b_status == 503 and b_doc["status"] == "Starting"
    assert c_status == 404 and c_doc["status"] == 404  # MMS's management routes are not public


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
    front = Front.from_settings(s, 3, free_port(), free_port())

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
            return await with_front(free_port(), ping, management_port=management.port,
                                    live_workers=lambda: live)
    assert asyncio.run(main(1)) == (200, {"status": "Healthy", "workers": 1})
    assert asyncio.run(main(0)) == (503, {"status": "Unhealthy", "workers": 0})
