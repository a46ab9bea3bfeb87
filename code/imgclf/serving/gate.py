"""The HTTP front on the public port: truthful /ping, request-size limit, then MMS.

MMS answers ``/ping`` with 200 as soon as its HTTP port is bound - before any worker has loaded
the model, and even when every worker is dead (the body then says "Unhealthy"). SageMaker only
reads the status code, so it would route traffic to a model that is not there. The gate owns
the public port from the first second and:

- answers ``/ping`` 503 until the server marks it ready (every MMS worker loaded and warmed),
  then 200 only while MMS reports its workers "Healthy" or "Partial Healthy" and at least one
  worker process that loaded the model is alive;
- refuses bodies over the payload limit with 413 and a JSON message before reading them;
- streams every other request to MMS on loopback over one upstream connection per client
  connection (keep-alive both sides), bodies unchanged (chunked request bodies are collected,
  up to the limit, and sent with a Content-Length).
"""

from __future__ import annotations

import asyncio
import json
import logging

log = logging.getLogger("imgclf.serving.gate")

HEAD_LIMIT = 64 * 1024
CHUNK = 256 * 1024
REASONS = {200: "OK", 400: "Bad Request", 411: "Length Required", 413: "Payload Too Large",
           502: "Bad Gateway", 503: "Service Unavailable"}


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def json_response(status: int, doc: dict, keep_alive: bool = True, head_only: bool = False) -> bytes:
    body = json.dumps(doc).encode()
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{'' if keep_alive else 'Connection: close' + chr(13) + chr(10)}\r\n")
    return head.encode() + (b"" if head_only else body)


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    """One request/response head (through the blank line); None on a clean EOF. Blank lines
    before it are skipped (in a loop: a client sending thousands must not exhaust the stack)."""
    while True:
        try:
            data = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                raise HttpError(400, "incomplete HTTP head") from None
            return None
        except asyncio.LimitOverrunError:
            raise HttpError(400, "HTTP head too large") from None
        data = data.lstrip(b"\r\n")
        if data:
            return data


def parse_head(data: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = data.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(400, f"malformed header line {line[:60]!r}")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def get(headers: list[tuple[str, str]], name: str) -> str | None:
    name = name.lower()
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


async def copy_exact(reader, writer, n: int) -> None:
    while n > 0:
        data = await reader.read(min(CHUNK, n))
        if not data:
            raise ConnectionError("connection closed mid-body")
        if writer is not None:
            writer.write(data)
            await writer.drain()
        n -= len(data)


async def read_chunked(reader, limit: int) -> bytes:
    """De-chunk a request body into memory; 413 past ``limit`` bytes."""
    parts, total = [], 0
    while True:
        try:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(400, "malformed chunked body") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        total += size
        if total > limit:
            raise HttpError(413, f"body is over the limit of {limit} bytes "
                                 f"(SAGEMAKER_MAX_PAYLOAD_IN_MB)")
        parts.append((await reader.readexactly(size + 2))[:-2])


async def copy_chunked(reader, writer) -> int:
    """Relay a chunked body verbatim (sizes, data, trailers); returns the data size."""
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        if writer is not None:
            writer.write(line)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(400, "malformed chunked body") from None
        if size == 0:
            while True:  # trailers, then the blank line
                trailer = await reader.readuntil(b"\r\n")
                if writer is not None:
                    writer.write(trailer)
                if trailer == b"\r\n":
                    break
            if writer is not None:
                await writer.drain()
            return total
        total += size
        await copy_exact(reader, writer, size + 2)


def body_length(headers) -> int | None:
    """Content-Length, or None for chunked; 0 for neither (requests without a body)."""
    te = get(headers, "Transfer-Encoding")
    if te and "chunked" in te.lower():
        return None
    cl = get(headers, "Content-Length")
    if cl is None:
        return 0
    try:
        n = int(cl)
    except ValueError:
        raise HttpError(400, "invalid Content-Length") from None
    if n < 0:
        raise HttpError(400, "invalid Content-Length")
    return n


async def lingering_close(reader, writer, seconds: float = 5, limit: int = 64 * 2**20) -> None:
    """Send our response, then read and drop what the client still sends (an unread body) before
    closing: closing with unread data makes the kernel send RST, which can destroy the response
    before the client reads it."""
    try:
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while limit > 0 and loop.time() < deadline:
            data = await asyncio.wait_for(reader.read(CHUNK), deadline - loop.time())
            if not data:
                break
            limit -= len(data)
    except (ConnectionError, asyncio.TimeoutError):
        pass


class Gate:
    def __init__(self, upstream_host: str, upstream_port: int, max_body: int,
                 live_workers=lambda: 1):
        self.upstream = (upstream_host, upstream_port)
        self.max_body = max_body
        self.live_workers = live_workers  # how many workers have the model loaded now
        self.ready = False

    async def upstream_health(self) -> tuple[bool, str]:
        """(healthy, MMS status) from MMS's own /ping on a fresh connection."""
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 5)
            try:
                w.write(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
                head = await asyncio.wait_for(read_head(r), 5)  # MMS ignores Connection: close
                n = body_length(parse_head(head or b"")[1]) or 0
                body = await asyncio.wait_for(r.readexactly(n), 5)
            finally:
                w.close()
            status = json.loads(body or b"{}").get("status", "")
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, HttpError) as e:
            return False, f"unreachable ({type(e).__name__})"
        return status in ("Healthy", "Partial Healthy"), status

    async def ping(self) -> tuple[int, dict]:
        if not self.ready:
            return 503, {"status": "Starting", "detail": "model workers are loading"}
        healthy, status = await self.upstream_health()
        live = self.live_workers()
        if healthy and not live:
            healthy, status = False, "Unhealthy"
        return (200 if healthy else 503), {"status": status, "workers": live}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                head = await read_head(reader)
                if head is None:
                    return
                keep_alive, upstream = await self.one_request(head, reader, writer, upstream)
                if not keep_alive:
                    return
        except HttpError as e:
            writer.write(json_response(e.status, {"error": e.message, "status": e.status}, False))
            await lingering_close(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            for w in ([upstream[1]] if upstream else []) + [writer]:
                try:
                    await w.drain()
                except (ConnectionError, RuntimeError):
                    pass
                w.close()

    async def one_request(self, head, reader, writer, upstream):
        request_line, headers = parse_head(head)
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise HttpError(400, "malformed request line")
        method, target, version = parts
        conn = (get(headers, "Connection") or "").lower()
        keep_alive = "close" not in conn and (version != "HTTP/1.0" or "keep-alive" in conn)
        length = body_length(headers)
        path = target.split("?", 1)[0]

        if path == "/ping" or (length is not None and length > self.max_body) or not self.ready:
            # Answered here: drain a (small) body first so the connection stays usable.
            if length is not None and length > self.max_body:
                msg = (f"body of {length} bytes is over the limit of {self.max_body} bytes "
                       f"(SAGEMAKER_MAX_PAYLOAD_IN_MB)")
                writer.write(json_response(413, {"error": msg, "status": 413}, False))
                await lingering_close(reader, writer)
                return False, upstream
            if length is None:
                await read_chunked(reader, self.max_body)
            else:
                await copy_exact(reader, None, length)
            if path == "/ping":
                status, doc = await self.ping()
            else:
                status, doc = 503, {"error": "model workers are still loading; retry when "
                                             "/ping answers 200", "status": 503}
            writer.write(json_response(status, doc, keep_alive, head_only=method == "HEAD"))
            await writer.drain()
            return keep_alive, upstream

        if (get(headers, "Expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = None
        if length is None:  # chunked: buffer (up to the limit) so MMS gets a plain body
            body = await read_chunked(reader, self.max_body)
            length = len(body)
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
            headers.append(("Content-Length", str(length)))
        out_head = [request_line] + [f"{k}: {v}" for k, v in headers if k.lower() != "expect"]
        if upstream is not None and (upstream[1].is_closing() or upstream[0].at_eof()):
            upstream[1].close()  # MMS closed the idle keep-alive connection
            upstream = None
        if upstream is None:
            try:
                upstream = await asyncio.open_connection(*self.upstream, limit=HEAD_LIMIT)
            except OSError as e:
                log.warning("model server unreachable: %s", e)
                writer.write(json_response(502, {"error": "model server unavailable",
                                                 "status": 502}, False))
                return False, None
        ur, uw = upstream
        uw.write(("\r\n".join(out_head) + "\r\n\r\n").encode("latin-1"))
        try:
            if body is not None:
                uw.write(body)
            else:
                await copy_exact(reader, uw, length)
            await uw.drain()
            resp_head = await read_head(ur)
            while resp_head is not None and resp_head.startswith(b"HTTP/1.1 100"):
                resp_head = await read_head(ur)
            if resp_head is None:
                raise ConnectionError("model server closed the connection")
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            uw.close()
            log.warning("upstream failed for %s %s: %s", method, path, e)
            writer.write(json_response(502, {"error": "model server unavailable", "status": 502},
                                       False))
            return False, None
        status_line, resp_headers = parse_head(resp_head)
        writer.write(resp_head)
        status = int(status_line.split(" ")[1])
        resp_len = body_length(resp_headers)
        resp_close = "close" in (get(resp_headers, "Connection") or "").lower()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            pass
        elif resp_len is None:
            await copy_chunked(ur, writer)
        elif get(resp_headers, "Content-Length") is not None:
            await copy_exact(ur, writer, resp_len)
        else:  # body delimited by the upstream closing
            while data := await ur.read(CHUNK):
                writer.write(data)
            resp_close = True
        await writer.drain()
        if resp_close:
            uw.close()
            return False, None
        return keep_alive, upstream
