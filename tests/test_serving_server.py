"""The real server: ``python -m imgclf.serving.server`` (front + multi-model-server + workers)
on a free loopback port, with a colour model trained in the test. One server per module; the
SIGTERM test runs last and stops it."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from smctl.local.runner import free_port
from serving_support import (CLASSES, color_image, dimension_bomb_png, encode, train_color_model,
                             truncated_jpeg, ugly_images)

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = 2
PAYLOAD_MB = 1
BODY_TIMEOUT_S = 8  # the drain test completes half-sent bodies within it
START_TIMEOUT_S = 240  # shared 2-CPU machine: worker start (torch import + load) can be slow


def serve_env(model_dir: str, port: int, run_dir: str | None = None, **extra) -> dict:
    env = dict(os.environ, SM_MODEL_DIR=model_dir, SAGEMAKER_BIND_TO_PORT=str(port),
               IMGCLF_BIND_HOST="127.0.0.1", PYTHONPATH=os.path.join(REPO, "code"),
               SAGEMAKER_MODEL_SERVER_WORKERS=str(WORKERS),
               SAGEMAKER_MAX_PAYLOAD_IN_MB=str(PAYLOAD_MB),
               IMGCLF_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S), **extra)
    if run_dir:
        env["IMGCLF_SERVE_RUN_DIR"] = run_dir
    return env


def request(port, method, path, body=None, headers=None, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read().decode()
    finally:
        conn.close()


def invoke(port, body, content_type, timeout=60, **headers):
    return request(port, "POST", "/invocations", body, {"Content-Type": content_type, **headers},
                   timeout=timeout)


class Server:
    def __init__(self, proc, port, run_dir, cwd, log_path, pings, first_latency):
        self.proc, self.port, self.run_dir, self.cwd = proc, port, run_dir, cwd
        self.log_path, self.pings, self.first_latency = log_path, pings, first_latency

    def proc_tree_root(self) -> int:
        """The JVM's pid (the one child of serve that runs MMS)."""
        kids = [p for p in psutil.Process(self.proc.pid).children()
                if "com.amazonaws.ml.mms.ModelServer" in " ".join(p.cmdline())]
        return kids[0].pid

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    train_color_model(str(d))
    return str(d)


def require_java() -> None:
    """MMS is a Java server. Without a JRE: skip on a laptop, fail in CI (CI=true)."""
    java_home = os.environ.get("JAVA_HOME")
    if shutil.which("java") or (java_home and os.path.exists(os.path.join(java_home, "bin", "java"))):
        return
    msg = "no Java runtime (java on PATH or JAVA_HOME): apt-get install openjdk-17-jre-headless"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    require_java()
    base = tmp_path_factory.mktemp("serve")
    cwd, run_dir = base / "cwd", base / "run"
    cwd.mkdir()
    port = free_port()
    log_path = base / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "imgclf.serving.server"], cwd=cwd,
                                env=serve_env(model_dir, port, str(run_dir)), stdout=log,
                                stderr=subprocess.STDOUT)
    pings, deadline = [], time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            pings.append(request(port, "GET", "/ping", timeout=10)[0])
        except OSError:
            pings.append(None)
        if pings[-1] == 200:
            break
        time.sleep(0.1)
    srv = Server(proc, port, str(run_dir), str(cwd), str(log_path), pings, None)
    if pings[-1:] != [200]:
        proc.kill()
        pytest.fail(f"server not ready after {START_TIMEOUT_S} s:\n{srv.log()[-3000:]}")
    t0 = time.monotonic()
    status, _, body = invoke(port, encode(color_image("green", seed=1)), "image/jpeg")
    srv.first_latency = time.monotonic() - t0
    assert status == 200, body
    yield srv
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def labels(body: str) -> list[str]:
    return [p["label"] for p in json.loads(body)["predictions"]]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ----------------------------------------------------------------------------- readiness
def test_ping_is_503_until_every_worker_is_warm(server):
    assert server.pings[-1] == 200
    assert 503 in server.pings, server.pings  # the front answered while the workers loaded
    assert 200 not in server.pings[:-1]
    status, ctype, body = request(server.port, "GET", "/ping")
    assert status == 200 and json.loads(body)["workers"] == WORKERS


def test_first_invocation_after_ping_pays_no_loading(server):
    # loading a worker (torch import + model + warm-up) takes seconds; a warm request ~20 ms
    assert server.first_latency < 3.0, server.first_latency


def test_logs_go_to_stdout_and_nothing_is_written_to_cwd(server):
    log = server.log()
    assert "Model server started" in log and "loaded and warm" in log
    assert f"model registered: {WORKERS} worker(s); the front batches up to" in log
    assert os.listdir(server.cwd) == []


# ------------------------------------------------------------------------ formats and labels
@pytest.mark.parametrize("content_type,fmt", [("image/jpeg", "JPEG"), ("image/png", "PNG"),
                                              ("application/x-image", "JPEG"),
                                              ("application/octet-stream", "PNG")])
def test_every_image_content_type(server, content_type, fmt):
    for i, name in enumerate(CLASSES):
        status, ctype, body = invoke(server.port, encode(color_image(name, seed=200 + i), fmt),
                                     content_type)
        assert (status, ctype) == (200, "application/json"), body
        assert labels(body) == [name]


def test_json_batch_and_topk(server):
    order = ["blue", "green", "red", "red", "blue"]
    imgs = [b64(encode(color_image(n, seed=300 + i))) for i, n in enumerate(order)]
    status, _, body = invoke(server.port, json.dumps({"images": imgs, "topk": 2}),
                             "application/json")
    assert status == 200 and labels(body) == order
    assert all(len(p["topk"]) == 2 for p in json.loads(body)["predictions"])
    status, _, body = invoke(server.port, json.dumps(imgs[0]), "application/json",
                             **{"X-Amzn-SageMaker-Custom-Attributes": "topk=1"})
    assert status == 200 and labels(body) == ["blue"]
    assert len(json.loads(body)["predictions"][0]["topk"]) == 1
    status, _, body = invoke(server.port, encode(color_image("red")), "image/jpeg",
                             Accept="application/json")
    assert status == 200 and len(json.loads(body)["predictions"][0]["topk"]) == 3
    # batch transform's other answer type: one line per image, labelled so
    status, ctype, body = invoke(server.port, json.dumps({"images": imgs, "topk": 2}),
                                 "application/json", Accept="application/jsonlines")
    assert (status, ctype) == (200, "application/jsonlines")
    assert [json.loads(line)["label"] for line in body.splitlines()] == order


@pytest.mark.parametrize("name", sorted(ugly_images()))
def test_ugly_images(server, name):
    status, _, body = invoke(server.port, ugly_images()[name], "application/octet-stream")
    assert status == 200, body
    if name not in ("grayscale_png", "16bit_png"):
        assert labels(body) == ["red"]


# ------------------------------------------------------------------------------ bad input
BAD = [
    ("empty body", b"", "image/jpeg", {}, 400),
    ("garbage", b"\x00garbage" * 10, "image/jpeg", {}, 400),
    ("truncated jpeg", truncated_jpeg(), "image/jpeg", {}, 400),
    ("dimension bomb", dimension_bomb_png(), "image/png", {}, 400),
    ("malformed json", b'{"images": [', "application/json", {}, 400),
    ("bad base64", b'{"images": ["@@@"]}', "application/json", {}, 400),
    ("bad topk", b'{"image": "AAAA", "topk": 0}', "application/json", {}, 400),
    ("wrong content type", b"hello", "text/plain", {}, 415),
    # what curl -F and curl -d send: MMS would parse both into form fields of its own
    ("multipart form", b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\""
     b"\r\nContent-Type: image/jpeg\r\n\r\n" + encode(color_image("red")) + b"\r\n--XyZ--\r\n",
     "multipart/form-data; boundary=XyZ", {}, 415),
    ("url-encoded form", b"image=" + encode(color_image("red"))[:200],
     "application/x-www-form-urlencoded", {}, 415),
    ("unacceptable accept", encode(color_image("red")), "image/jpeg", {"Accept": "text/csv"}, 406),
    ("over payload limit", b"\xff" * (PAYLOAD_MB * 2**20 + 10), "image/jpeg", {}, 413),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_short_json_then_worker_survives(server, case):
    _, body, ctype, headers, code = case
    status, resp_type, resp = invoke(server.port, body, ctype, **headers)
    assert status == code, resp
    assert resp_type.startswith("application/json")
    doc = json.loads(resp)
    assert doc["status"] == code and doc["error"]
    assert "Traceback" not in resp and len(resp) < 500
    status, _, resp = invoke(server.port, encode(color_image("blue")), "image/jpeg")
    assert status == 200 and labels(resp) == ["blue"]


def test_concurrent_requests_share_batched_forwards_and_one_bad_image_fails_alone(server):
    """48 clients at once, each its own colour and top-k, one truncated JPEG among them: every
    answer is its own image's, only the bad one fails, forwards were shared (the batch-size
    header), and /ping still answers fast meanwhile."""
    jobs = [(CLASSES[i % 3], 1 + i % 3) for i in range(48)]
    bad = 17

    def one(i):
        name, k = jobs[i]
        body = truncated_jpeg() if i == bad else encode(color_image(name, seed=400 + i))
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        try:
            conn.request("POST", "/invocations", body, {
                "Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": f"topk={k}"})
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type"), json.loads(resp.read())
        finally:
            conn.close()

    with ThreadPoolExecutor(48) as pool:
        futures = [pool.submit(one, i) for i in range(len(jobs))]
        t0 = time.monotonic()
        ping = request(server.port, "GET", "/ping", timeout=10)[0]
        ping_s = time.monotonic() - t0
        results = [f.result() for f in futures]
    assert ping == 200 and ping_s < 2.0, ping_s
    for i, (status, ctype, doc) in enumerate(results):
        assert ctype == "application/json"
        if i == bad:
            assert status == 400 and "truncated" in doc["error"], doc
            continue
        name, k = jobs[i]
        assert status == 200, doc
        assert doc["predictions"][0]["label"] == name and len(doc["predictions"][0]["topk"]) == k
    log = server.log()
    shared = re.findall(r"one forward for (\d+) requests", log)
    assert shared and max(map(int, shared)) > 1, shared  # some requests shared a forward
    # one MMS job per batch (imgclf.serving.bundle): MMS never decodes a multi-answer reply
    assert "Worker died" not in log and "DecoderException" not in log


# The framing corpus: each must be refused with 400 before anything reaches MMS; the front
# keeps serving after each. (RFC 9112 6.3: a message with both lengths, or with invalid or
# conflicting Content-Length, must not be forwarded.)
HEAD = "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
FRAMING = {
    "te_and_cl": HEAD + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te_and_two_cl": HEAD + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"
                            "Content-Length: 7\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two_cl_differ": HEAD + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "two_cl_same": HEAD + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "cl_list": HEAD + "Content-Length: 5, 5\r\n\r\nhello",
    "cl_alpha": HEAD + "Content-Length: abc\r\n\r\n",
    "cl_negative": HEAD + "Content-Length: -5\r\n\r\n",
    "cl_plus": HEAD + "Content-Length: +5\r\n\r\nhello",
    "chunk_negative": HEAD + "Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk_huge": HEAD + "Transfer-Encoding: chunked\r\n\r\n" + "f" * 24 + "\r\nhello\r\n0\r\n\r\n",
    "chunk_not_hex": HEAD + "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk_ext_ctl": HEAD + "Transfer-Encoding: chunked\r\n\r\n5;\x01\r\nhello\r\n0\r\n\r\n",
    "te_not_chunked": HEAD + "Transfer-Encoding: gzip\r\n\r\nhello",
    "te_xchunked": HEAD + "Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te_twice": HEAD + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "5\r\nhello\r\n0\r\n\r\n",
    "space_before_colon": HEAD + "Content-Length : 5\r\n\r\nhello",
    "obs_fold": HEAD + "X-A: b\r\n c\r\nContent-Length: 5\r\n\r\nhello",
    "nul_in_value": HEAD + "X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "bare_lf": "POST /invocations HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello",
    "bad_request_line": "POST /invocations HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    "long_header_line": HEAD + "X-A: " + "a" * 9000 + "\r\n\r\n",
    "header_flood": HEAD + "".join(f"X-{i}: v\r\n" for i in range(200)) + "Content-Length: 0\r\n\r\n",
    "oversized_head": HEAD + "".join(f"X-{i}: {'v' * 4000}\r\n" for i in range(40)) + "\r\n",
}


def raw_exchange(port: int, data: bytes, timeout: float = 20) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


@pytest.mark.parametrize("name", sorted(FRAMING))
def test_malformed_framing_is_400_json_and_the_server_keeps_serving(server, name):
    raw = raw_exchange(server.port, FRAMING[name].encode("latin-1"))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", raw[:300]
    doc = json.loads(body)
    assert doc["status"] == 400 and doc["error"] and len(body) < 300
    # raw_exchange returned: the front closed the connection (nothing after it is parsed)
    status, _, resp = invoke(server.port, encode(color_image("green")), "image/jpeg")
    assert status == 200 and labels(resp) == ["green"]


def test_slow_body_is_408_and_an_oversized_one_413_before_it_is_sent(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall((HEAD + "Content-Length: 1000\r\n\r\n").encode() + b"x" * 10)
        t0 = time.monotonic()
        raw = s.recv(65536)  # the answer comes at the timeout (the close after aiohttp's linger)
        waited = time.monotonic() - t0
        while b"}" not in raw:
            raw += s.recv(65536)
    assert raw.split(b" ")[1] == b"408", raw[:200]
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["status"] == 408
    assert BODY_TIMEOUT_S - 0.5 < waited < BODY_TIMEOUT_S + 5
    # 413 on the head alone: the client has not sent (and never sends) the body
    raw = raw_exchange(server.port, (HEAD + f"Content-Length: {PAYLOAD_MB * 2**20 + 1}\r\n\r\n")
                       .encode())
    assert raw.split(b" ")[1] == b"413" and b'"status": 413' in raw
    status, _, resp = invoke(server.port, encode(color_image("blue")), "image/jpeg")
    assert status == 200 and labels(resp) == ["blue"]


def test_chunked_bodies_and_their_limit(server):
    def chunked(body: bytes):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        pieces = [body[i:i + 50_000] for i in range(0, len(body), 50_000)]
        conn.request("POST", "/invocations", iter(pieces), {"Content-Type": "image/png"},
                     encode_chunked=True)
        resp = conn.getresponse()
        out = resp.status, resp.read().decode()
        conn.close()
        return out
    status, body = chunked(encode(color_image("green", size=(200, 200)), "PNG"))
    assert status == 200 and labels(body) == ["green"]
    status, body = chunked(b"\x89PNG" + b"\x00" * (PAYLOAD_MB * 2**20))
    assert status == 413 and json.loads(body)["status"] == 413


def test_a_gzip_body_is_predicted_and_a_coding_the_front_cannot_decode_is_415(server):
    """The front decodes gzip (the payload limit holds for the decoded size) and MMS's worker
    gets the image without a Content-Encoding it would not undo."""
    jpeg = encode(color_image("red"))
    status, _, body = invoke(server.port, gzip.compress(jpeg), "image/jpeg",
                             **{"Content-Encoding": "gzip"})
    assert status == 200 and labels(body) == ["red"], body
    status, _, body = invoke(server.port, gzip.compress(b"\0" * (PAYLOAD_MB * 2**20 + 1)),
                             "image/jpeg", **{"Content-Encoding": "gzip"})
    assert status == 413 and json.loads(body)["status"] == 413
    status, _, body = invoke(server.port, jpeg, "image/jpeg", **{"Content-Encoding": "br"})
    assert status == 415 and "gzip" in json.loads(body)["error"]


def test_keep_alive_connection_serves_many_requests(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    for i in range(6):
        name = CLASSES[i % 3]
        conn.request("POST", "/invocations", encode(color_image(name)), {"Content-Type": "image/png"})
        resp = conn.getresponse()
        assert resp.status == 200 and labels(resp.read().decode()) == [name]
    conn.request("GET", "/ping")
    assert conn.getresponse().status == 200
    conn.close()


def test_requests_write_no_log_line_each(server):
    """MMS logs "Backend response time: N" for every request (and the JVM parses a metrics line
    from the worker for each); serve drops that line, so a busy endpoint's log holds no line per
    request unless IMGCLF_ACCESS_LOG_LEVEL=info asks for the access log."""
    lines = len(server.log().splitlines())
    for i in range(8):
        status, _, body = invoke(server.port, encode(color_image(CLASSES[i % 3])), "image/png")
        assert status == 200, body
    time.sleep(0.5)  # MMS logs after answering
    log = server.log()
    assert "Model server started" in log  # MMS's other info lines still come
    assert "Backend response time" not in log
    assert len(log.splitlines()) - lines < 8, log.splitlines()[lines:]


def test_requests_recover_when_the_worker_processes_die(server):
    """Kill every process that holds the model (what the OOM killer picks): MMS reconnects, its
    listener forks new ones, a request sent meanwhile waits for the reload and is answered."""
    from imgclf.serving.server import model_workers
    pids = model_workers(server.proc_tree_root())
    assert len(pids) == WORKERS
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=10)
    status, _, body = invoke(server.port, encode(color_image("red")), "image/jpeg", timeout=120)
    assert status == 200 and labels(body) == ["red"]
    new = model_workers(server.proc_tree_root())
    assert len(new) == WORKERS and not set(pids) & set(new)
    assert request(server.port, "GET", "/ping")[0] == 200


# ---------------------------------------------------------------------- shutdown (run last)
def test_sigterm_drains_requests_in_flight_then_stops_server_and_all_workers(server):
    """Six requests in flight (their bodies half sent) when SIGTERM arrives: the listener
    closes at once, all six are answered 200 after the signal, then MMS and its workers stop."""
    tree = psutil.Process(server.proc.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in tree)
    assert "com.amazonaws.ml.mms.ModelServer" in names and "model_service_worker" in names
    assert len(tree) >= 1 + WORKERS
    bodies = [encode(color_image(CLASSES[i % 3], seed=900 + i)) for i in range(6)]
    socks = []
    for body in bodies:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        s.sendall((HEAD + f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:len(body) // 2])
        socks.append(s)
    time.sleep(0.3)  # the front has read every head
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the listening socket goes away first
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        except OSError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("still accepting connections 10 s after SIGTERM")
    answers = []
    for s, body in zip(socks, bodies):
        s.sendall(body[len(body) // 2:])
    for s in socks:
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
        s.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        doc = json.loads(body)
        answers.append((head.split(b" ")[1], doc["predictions"][0]["label"] if "predictions" in doc else doc))
    assert answers == [(b"200", CLASSES[i % 3]) for i in range(6)]
    assert server.proc.wait(60) == 0
    _, alive = psutil.wait_procs(tree, timeout=10)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.cmdline() for p in alive]
    leftovers = []
    for p in psutil.process_iter(["cmdline"]):
        if server.run_dir in " ".join(p.info["cmdline"] or []):
            leftovers.append(p.info["cmdline"])
    assert not leftovers
    assert "SIGTERM received" in server.log() and "workers stopped" in server.log()
    assert "draining 6 request(s) in flight" in server.log()


# ------------------------------------------------------------------- pre-flight (no MMS)
def run_serve(model_dir, tmp_path):
    return subprocess.run([sys.executable, "-m", "imgclf.serving.server"], cwd=tmp_path,
                          env=serve_env(str(model_dir), free_port()), capture_output=True,
                          text=True, timeout=180)


def test_bad_setting_read_by_the_workers_is_refused_before_mms_starts(tmp_path):
    """IMGCLF_INFERENCE is read by each worker at load: a typo must stop ``serve`` at once with
    one line, not leave workers failing behind a /ping 503 until the startup timeout."""
    env = dict(serve_env(str(tmp_path), free_port()), IMGCLF_INFERENCE="fastest")
    r = subprocess.run([sys.executable, "-m", "imgclf.serving.server"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "bad serving configuration: IMGCLF_INFERENCE='fastest': use one of "
        "optimized, eager, onnxruntime, jit"]
    assert "Model server started" not in r.stdout


@pytest.mark.parametrize("name", ["IMGCLF_SERVE_RUN_DIR", "TMPDIR"])
def test_a_run_dir_too_long_for_mms_sockets_is_refused_before_mms_starts(model_dir, tmp_path,
                                                                          name):
    """The workers' and MMS's Unix sockets live in the run dir: one too deep for ``sun_path``
    stops ``serve`` with one line (before, the workers could not bind and MMS's registration
    failed a minute later with a 500)."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    env = serve_env(model_dir, free_port())
    env.pop("IMGCLF_SERVE_RUN_DIR", None)
    env[name] = str(deep)
    r = subprocess.run([sys.executable, "-m", "imgclf.serving.server"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("bad serving configuration: ") and "is too long for the Unix " in line
    assert name in line
    assert "Model server started" not in r.stdout
    assert list(deep.iterdir()) == []  # no temp dir left behind


def test_missing_artifact_exits_nonzero_with_clear_message(tmp_path):
    r = run_serve(tmp_path / "nothing-here", tmp_path)
    assert r.returncode == 2
    assert "cannot serve the model" in r.stderr and "no model.json" in r.stderr


def test_corrupt_artifact_exits_nonzero_with_clear_message(model_dir, tmp_path):
    bad = tmp_path / "model"
    bad.mkdir()
    with open(os.path.join(model_dir, "model.json")) as f:
        (bad / "model.json").write_text(f.read())
    (bad / "model.pt").write_bytes(b"this is not a state dict")
    r = run_serve(bad, tmp_path)
    assert r.returncode == 2
    assert "cannot be read as a state_dict" in r.stderr
    assert "Model server started" not in r.stdout  # refused before starting MMS
