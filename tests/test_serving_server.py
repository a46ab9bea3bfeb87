"""The real server: ``python -m imgclf.serving.server`` (gate + multi-model-server + workers)
on a free loopback port, with a colour model trained in the test. One server per module."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from serving_support import (CLASSES, color_image, dimension_bomb_png, encode, train_color_model,
                             truncated_jpeg, ugly_images)

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = 2
PAYLOAD_MB = 1
START_TIMEOUT_S = 240  # shared 2-CPU machine: worker start (torch import + load) can be slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env(model_dir: str, port: int, run_dir: str | None = None, **extra) -> dict:
    env = dict(os.environ, SM_MODEL_DIR=model_dir, SAGEMAKER_BIND_TO_PORT=str(port),
               IMGCLF_BIND_HOST="127.0.0.1", PYTHONPATH=os.path.join(REPO, "code"),
               SAGEMAKER_MODEL_SERVER_WORKERS=str(WORKERS),
               SAGEMAKER_MAX_PAYLOAD_IN_MB=str(PAYLOAD_MB), **extra)
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


def invoke(port, body, content_type, **headers):
    return request(port, "POST", "/invocations", body, {"Content-Type": content_type, **headers})


class Server:
    def __init__(self, proc, port, run_dir, cwd, log_path, pings, first_latency):
        self.proc, self.port, self.run_dir, self.cwd = proc, port, run_dir, cwd
        self.log_path, self.pings, self.first_latency = log_path, pings, first_latency

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
    assert 503 in server.pings, server.pings  # the gate answered while the workers loaded
    assert 200 not in server.pings[:-1]
    status, ctype, body = request(server.port, "GET", "/ping")
    assert status == 200 and json.loads(body)["workers"] == WORKERS
    ready = os.listdir(os.path.join(server.run_dir, "ready"))
    assert len([f for f in ready if f.endswith(".ready")]) == WORKERS


def test_first_invocation_after_ping_pays_no_loading(server):
    # loading a worker (torch import + model + warm-up) takes seconds; a warm request ~20 ms
    assert server.first_latency < 3.0, server.first_latency


def test_logs_go_to_stdout_and_nothing_is_written_to_cwd(server):
    log = server.log()
    assert "Model server started" in log and "loaded and warm" in log
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


def test_sixteen_concurrent_clients_all_correct(server):
    jobs = [CLASSES[i % 3] for i in range(64)]

    def one(i):
        name = jobs[i]
        status, _, body = invoke(server.port, encode(color_image(name, seed=400 + i)), "image/jpeg")
        return status, body, name

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(len(jobs))))
    assert all(s == 200 for s, _, _ in results), [b for s, b, _ in results if s != 200][:3]
    assert [labels(b)[0] for _, b, _ in results] == jobs


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


def test_ping_tells_the_truth_when_workers_die(server):
    """Kill every worker that holds the model: /ping goes 503 (MMS alone would still say 200)
    until MMS has restarted them and they have reloaded; then requests work again."""
    from imgclf.serving.handler import ready_workers
    ready_dir = os.path.join(server.run_dir, "ready")
    pids = ready_workers(ready_dir)
    assert len(pids) == WORKERS
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=10)
    codes, deadline = [], time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        codes.append(request(server.port, "GET", "/ping")[0])
        if codes[-1] == 200:
            break
        time.sleep(0.2)
    assert codes[0] == 503 and codes[-1] == 200, codes
    assert not set(pids) & set(ready_workers(ready_dir))
    status, _, body = invoke(server.port, encode(color_image("red")), "image/jpeg")
    assert status == 200 and labels(body) == ["red"]


# ---------------------------------------------------------------------- shutdown (run last)
def test_sigterm_stops_server_and_all_workers(server):
    tree = psutil.Process(server.proc.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in tree)
    assert "com.amazonaws.ml.mms.ModelServer" in names and "model_service_worker" in names
    assert len(tree) >= 1 + WORKERS
    server.proc.send_signal(signal.SIGTERM)
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


# ------------------------------------------------------------------- pre-flight (no MMS)
def run_serve(model_dir, tmp_path):
    return subprocess.run([sys.executable, "-m", "imgclf.serving.server"], cwd=tmp_path,
                          env=serve_env(str(model_dir), free_port()), capture_output=True,
                          text=True, timeout=180)


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
