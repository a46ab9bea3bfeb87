"""Serving benchmark: the real server against the same model in-process, side by side.

    make bench-serve            # or: python scripts/bench_serve.py --arch resnet18 --requests 80

Starts ``python -m imgclf.serving.server`` (front + MMS + workers, its own thread plan) on a free
loopback port with an artifact of ``--arch`` (random weights: timing does not depend on them;
``--model-dir`` to use a trained one) and prints one table:

- in-process, with every CPU the container may use (imgclf.resources): one image (decode +
  preprocess + forward) on each inference path (imgclf.serving.fastpath: eager, jit,
  onnxruntime, and optimised = the one IMGCLF_INFERENCE=optimized chooses, which the server
  serves), and the batched limit (decode each image + forwards of batches of 16, images/s);
- served, after ``--warmup`` requests (the JVM in front of the workers runs interpreted code
  until it has compiled its request path): p50/p99 latency at concurrency 1, in blocks that
  alternate with the same image in-process (its ratio is against those), images/s at
  concurrency 16 (one image per request, keep-alive clients, in 3 blocks of at least 10 rounds
  of each client, each block after the batched limit measured in-process; its ratio is against
  those), counted while all 16 clients are sending (the whole blocks' rate, ramp-up and tail
  included, is the next row);
- cold start: process start -> /ping 200, and -> first answer;

on the device the server uses (``--device auto``: the GPU when torch sees one, as the workers do;
``--device cpu`` hides the GPUs from both sides). On a GPU the in-process paths are eager and
optimised (float16 autocast + channels_last); the CPU candidates are not measured there;

with the ratios against the goals: served p50 at c=1 <= 1.15x in-process single, served c=16
>= 0.9x the batched limit, optimised >= 1.3x eager. The in-process paths take turns image by
image, before and after the server runs; the faster of the two is kept (others may share the
machine).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "code"))
sys.path.insert(0, os.path.join(REPO, "scripts"))
from smctl.local.runner import free_port  # noqa: E402  (stdlib only)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet18", help="architecture (default: resnet18)")
    p.add_argument("--num-classes", type=int, default=133, help="classes (default: 133, dogs)")
    p.add_argument("--image-size", type=int, default=224, help="crop size (default: 224)")
    p.add_argument("--model-dir", help="serve this artifact instead of a random-weight one")
    p.add_argument("--workers", type=int, help="SAGEMAKER_MODEL_SERVER_WORKERS (default: serve's)")
    p.add_argument("--requests", type=int, default=80,
                   help="requests per concurrency, at least 30 per client (default: 80)")
    p.add_argument("--warmup", type=int, default=300,
                   help="requests sent (at concurrency 4, not counted) before measuring: MMS's JVM "
                        "compiles its request path over the first few hundred (default: 300)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16],
                   help="client concurrency levels (default: 1 16)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): CUDA when torch sees a GPU, as the server's workers "
                        "choose; cpu: hide the GPUs from the server and the in-process paths")
    p.add_argument("--json-out", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def make_jpeg(width=500, height=375) -> bytes:
    """A photo-sized JPEG (500x375 like the issue's photos; smooth gradients + noise, q 90)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_artifact(args, model_dir: str) -> None:
    from imgclf.artifact import ModelMeta, save_artifact
    from imgclf.models import build_model
    from imgclf.transforms import default_resize_size
    classes = [f"{i:03d}.class_{i}" for i in range(1, args.num_classes + 1)]
    save_artifact(model_dir, build_model(args.arch, len(classes)).state_dict(),
                  ModelMeta(arch=args.arch, classes=classes, image_size=args.image_size,
                            resize_size=default_resize_size(args.image_size)))


def post(conn: http.client.HTTPConnection, body: bytes) -> float:
    t0 = time.perf_counter()
    conn.request("POST", "/invocations", body, {"Content-Type": "image/jpeg"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{resp.status}: {data[:200]!r}")
    return time.perf_counter() - t0


def load(port: int, body: bytes, concurrency: int, n: int) -> dict:
    """``n`` requests from ``concurrency`` keep-alive clients. Besides the whole run's rate,
    ``steady_req_per_s`` counts only the window in which every client is sending: from the
    moment the last client got its first answer to the moment the first client got its last.
    Before it the clients ramp up, after it fewer than ``concurrency`` remain, so the whole
    run's rate understates the rate *at* that concurrency by a few batches' worth."""
    latencies, lock, errors = [], threading.Lock(), []
    done: list[list[float]] = [[] for _ in range(concurrency)]  # completion times per client
    counter = iter(range(n))

    def client(i):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        post(conn, body)  # warm this connection (not counted)
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            try:
                dt = post(conn, body)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
                continue
            done[i].append(time.perf_counter())
            with lock:
                latencies.append(dt)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    lat = sorted(latencies)
    start = max(d[0] for d in done if d) if all(done) else t0
    end = min(d[-1] for d in done) if all(done) else t0
    steady = sum(start < t <= end for d in done for t in d)
    steady_s = end - start
    if steady_s <= 0 or not steady:  # too few rounds for a window: the whole run
        steady, steady_s = len(lat), wall
    return {"concurrency": concurrency, "requests": len(lat), "p50_ms": 1e3 * percentile(lat, 50),
            "p99_ms": 1e3 * percentile(lat, 99), "req_per_s": len(lat) / wall,
            "steady_requests": steady, "steady_s": steady_s}


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


class CpuMeter:
    """CPU seconds (user + system) of the server's processes by role - the front (``serve``
    itself), MMS's JVM, the model workers - and of this process, the client. CPU time barely
    moves with the machine's drift, so it says where a served image's cost goes where the
    wall-clock ratios swing."""

    ROLES = ("worker", "mms", "front", "client")

    def __init__(self, server_pid: int):
        import psutil
        self._psutil = psutil
        self.server = psutil.Process(server_pid)
        self.total = dict.fromkeys(self.ROLES, 0.0)
        self.images = 0

    def snapshot(self) -> dict:
        psutil = self._psutil
        out = dict.fromkeys(self.ROLES, 0.0)
        out["front"] = sum(self.server.cpu_times()[:2])
        for child in self.server.children(recursive=True):
            try:
                role = "mms" if "java" in child.name() else "worker"
                out[role] += sum(child.cpu_times()[:2])
            except psutil.Error:  # a process that just went away
                pass
        out["client"] = sum(psutil.Process().cpu_times()[:2])
        return out

    def measure(self, fn, *args):
        """``fn(*args)``, its CPU added by role; returns what it returned."""
        a = self.snapshot()
        r = fn(*args)
        b = self.snapshot()
        for k in self.ROLES:
            self.total[k] += b[k] - a[k]
        return r

    def per_image_ms(self) -> dict:
        return {k: 1e3 * v / max(1, self.images) for k, v in self.total.items()}


# IMGCLF_INFERENCE values measured in-process; "optimized" (what the server serves) last, as the
# batched limit uses it. On a GPU the CPU candidates would only fall back to eager.
IN_PROCESS_PATHS = ("eager", "jit", "onnxruntime", "optimized")
GPU_IN_PROCESS_PATHS = ("eager", "optimized")


def resolve_device(wanted: str) -> str:
    """``cpu`` or ``cuda`` for ``--device``; ``cpu`` hides the GPUs from this process (before
    CUDA starts) and from the server, which inherits the environment."""
    if wanted == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch
    if wanted == "cpu" or not torch.cuda.is_available():
        if wanted == "cuda":
            print("bench_serve: --device cuda, but torch sees no GPU (torch "
                  f"{torch.__version__}, CUDA build {torch.version.cuda})", file=sys.stderr)
            raise SystemExit(2)
        return "cpu"
    return "cuda"


def in_process_models(model_dir: str, threads: int, device: str = "cpu") -> dict:
    """The artifact loaded once on each in-process path for ``device``."""
    import torch

    from imgclf.serving import handler
    paths = IN_PROCESS_PATHS if device == "cpu" else GPU_IN_PROCESS_PATHS
    models = {}
    for mode in paths:
        torch.set_num_threads(threads)  # the worker's share; predicting sets each path's own
        models[mode] = handler.load_model(model_dir, device, inference=mode)
    return models


def device_name(device: str) -> str:
    import torch
    return torch.cuda.get_device_name(0) if device == "cuda" else "CPU"


def single_ms(served, body: bytes) -> float:
    from imgclf.serving import handler
    t0 = time.perf_counter()
    handler.predict_fn(handler.InferenceRequest([body]), served)
    return 1e3 * (time.perf_counter() - t0)


def in_process(models: dict, body: bytes, threads: int, n: int = 30) -> dict:
    """One image (decode + preprocess + forward) on each path, the paths taking turns image by
    image (so the machine's drift is shared, not put on one path), and the batched limit on the
    optimised one."""
    from imgclf.serving import handler
    times: dict[str, list[float]] = {mode: [] for mode in models}
    for i in range(n + 3):
        for mode, served in models.items():
            dt = single_ms(served, body)
            if i >= 3:
                times[mode].append(dt)
    out = {"threads": threads}
    for mode, served in models.items():
        out[f"single_{mode}_ms"] = statistics.median(times[mode])
        out[f"path_{mode}"] = served.path.name
    out["batched16_img_s"] = batched_img_s(models["optimized"], body)  # as served
    return out


def batched_img_s(served, body: bytes, batches: int = 4) -> float:
    """Images/s of decode each image + one forward, in batches of 16."""
    from imgclf.serving import handler
    t0 = time.perf_counter()
    for _ in range(batches):
        handler.predict_batch([handler.InferenceRequest([body]) for _ in range(16)], served)
    return 16 * batches / (time.perf_counter() - t0)


def load_side_by_side(port: int, body: bytes, served, concurrency: int, n: int,
                      meter: CpuMeter, blocks: int = 3) -> dict:
    """Served images/s at ``concurrency`` in ``blocks`` blocks of ``n / blocks`` requests, each
    after the in-process batched limit measured on the same machine just before; the CPU of
    both, per image."""
    runs, limits, local_cpu = [], [], 0.0
    for _ in range(blocks):
        c0 = time.process_time()
        limits.append(batched_img_s(served, body, batches=3))
        local_cpu += time.process_time() - c0
        runs.append(meter.measure(load, port, body, concurrency, max(concurrency, n // blocks)))
        meter.images += runs[-1]["requests"] + concurrency  # and each client's warm-up request
    wall = sum(r["requests"] / r["req_per_s"] for r in runs)
    return {"concurrency": concurrency, "requests": sum(r["requests"] for r in runs),
            "req_per_s": sum(r["requests"] for r in runs) / wall,
            "steady_req_per_s": (sum(r["steady_requests"] for r in runs)
                                 / sum(r["steady_s"] for r in runs)),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": max(r["p99_ms"] for r in runs),
            "batched16_img_s": statistics.median(limits),
            "cpu_ms_per_image": meter.per_image_ms(),
            "batched16_cpu_ms_per_image": 1e3 * local_cpu / (blocks * 3 * 16)}


def c1_side_by_side(port: int, body: bytes, served, meter: CpuMeter, rounds: int = 8,
                    per: int = 10) -> dict:
    """Served requests at concurrency 1 and the same image in-process on the optimised path,
    in alternating blocks of ``per``, so both see the same machine; the CPU of both, per image."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    post(conn, body)
    remote, local, local_cpu = [], [], 0.0
    for _ in range(rounds):
        c0 = time.process_time()
        local += [single_ms(served, body) for _ in range(per)]
        local_cpu += time.process_time() - c0
        remote += meter.measure(lambda: [1e3 * post(conn, body) for _ in range(per)])
        meter.images += per
    conn.close()
    remote.sort()
    return {"concurrency": 1, "requests": len(remote), "p50_ms": percentile(remote, 50),
            "p99_ms": percentile(remote, 99), "in_process_ms": statistics.median(local),
            "cpu_ms_per_image": meter.per_image_ms(),
            "in_process_cpu_ms_per_image": 1e3 * local_cpu / len(local)}


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    from imgclf import resources
    tmp = tempfile.mkdtemp(prefix="bench-serve-")
    model_dir = args.model_dir or os.path.join(tmp, "model")
    if not args.model_dir:
        make_artifact(args, model_dir)
    body = make_jpeg()
    port = free_port()
    env = dict(os.environ, SM_MODEL_DIR=model_dir, SAGEMAKER_BIND_TO_PORT=str(port),
               IMGCLF_BIND_HOST="127.0.0.1",  # the caller's PYTHONPATH kept, after ours
               PYTHONPATH=os.pathsep.join(filter(None, (os.path.join(REPO, "code"),
                                                         os.environ.get("PYTHONPATH")))))
    if args.workers:
        env["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(args.workers)
    log_path = os.path.join(tmp, "serve.log")
    cpus = resources.cpu_count()
    r: dict = {"arch": args.arch, "image_size": args.image_size, "jpeg_bytes": len(body),
               "cpus": cpus, "device": device_name(device)}
    models = in_process_models(model_dir, cpus, device)
    before = in_process(models, body, cpus)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "imgclf.serving.server"], env=env,
                                cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}; log: {log_path}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        r["cold_start_ping_s"] = time.perf_counter() - t0
        post(http.client.HTTPConnection("127.0.0.1", port, timeout=120), body)
        r["cold_start_first_answer_s"] = time.perf_counter() - t0
        with open(log_path) as f:
            text = f.read()
        plan = [line for line in text.splitlines() if "starting MMS with" in line]
        r["workers"] = plan[0].split("starting MMS with ")[1].split(";")[0] if plan else "?"
        # the workers' paths; the pre-flight check's "eager (requested)" is not one
        paths = sorted({m.group(1) for m in re.finditer(r"inference path: (\S+)(.*)", text)
                        if "(requested)" not in m.group(2)})
        r["served_path"] = ",".join(paths) or "?"
        if args.warmup:
            load(port, body, 4, args.warmup)
        # at least 10 rounds of every client per block: a few rounds of 16 would mostly measure
        # the ramp-up
        r["served"] = [c1_side_by_side(port, body, models["optimized"], CpuMeter(proc.pid),
                                       per=max(1, args.requests // 8)) if c == 1 else
                       load_side_by_side(port, body, models["optimized"], c,
                                         max(args.requests, 30 * c), CpuMeter(proc.pid))
                       for c in args.concurrency]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    after = in_process(models, body, cpus)
    ip = {k: (min(before[k], after[k]) if k.endswith("_ms") else
              max(before[k], after[k]) if k.endswith("_s") else after[k]) for k in after}
    r["in_process"] = ip
    shutil.rmtree(tmp, ignore_errors=True)
    r["loadavg_1m"] = os.getloadavg()[0]
    by_c = {s["concurrency"]: s for s in r["served"]}
    print(f"\nserving benchmark: {r['arch']} {r['image_size']}px, one {r['jpeg_bytes'] // 1024} KB "
          f"500x375 JPEG per request, {cpus} CPUs (cgroup-aware), {r['device']}, "
          f"served: {r['workers']}, "
          f"path {r['served_path']}, measured after {args.warmup} warm-up requests")
    rows = [("in-process single, eager", f"{ip['single_eager_ms']:.1f} ms", "")]
    for mode in (m for m in ("jit", "onnxruntime") if f"single_{m}_ms" in ip):
        rows.append((f"in-process single, {mode}", f"{ip[f'single_{mode}_ms']:.1f} ms",
                     f"{ip['single_eager_ms'] / ip[f'single_{mode}_ms']:.2f}x eager"
                     + ("" if ip[f"path_{mode}"] != "eager" else " (fell back to eager)")))
    rows += [
        ("in-process single, optimised", f"{ip['single_optimized_ms']:.1f} ms",
         f"{ip['single_eager_ms'] / ip['single_optimized_ms']:.2f}x eager (goal >= 1.3x)"),
        ("in-process batched limit (16)", f"{ip['batched16_img_s']:.1f} img/s", ""),
    ]
    if 1 in by_c:
        c1 = by_c[1]
        # the overhead in ms too: it is about fixed (the hops around the forward), so the ratio
        # grows as the forward gets faster
        rows.append(("served p50 / p99, c=1", f"{c1['p50_ms']:.1f} / {c1['p99_ms']:.1f} ms",
                     f"{c1['p50_ms'] / c1['in_process_ms']:.2f}x in-process single measured "
                     f"alongside, {c1['in_process_ms']:.1f} ms: "
                     f"+{c1['p50_ms'] - c1['in_process_ms']:.1f} ms "
                     f"(goal <= 1.15x: +{0.15 * c1['in_process_ms']:.1f} ms)"))
    for c, srv in sorted(by_c.items()):
        if c == 1:
            continue
        rows.append((f"served, c={c}", f"{srv['steady_req_per_s']:.1f} img/s",
                     f"{srv['steady_req_per_s'] / srv['batched16_img_s']:.2f}x batched limit "
                     f"measured alongside, {srv['batched16_img_s']:.1f} img/s (goal >= 0.9x)"
                     f"; p50 {srv['p50_ms']:.0f} ms"))
        rows.append((f"  with ramp-up and tail, c={c}", f"{srv['req_per_s']:.1f} img/s",
                     f"{srv['req_per_s'] / srv['batched16_img_s']:.2f}x (whole blocks: clients "
                     "starting and finishing)"))
    for c, srv in sorted(by_c.items()):
        cpu = srv["cpu_ms_per_image"]
        ref = srv.get("in_process_cpu_ms_per_image", srv.get("batched16_cpu_ms_per_image"))
        rows.append((f"CPU per image, c={c}", f"{sum(cpu.values()):.1f} ms",
                     " + ".join(f"{k} {cpu[k]:.1f}" for k in CpuMeter.ROLES)
                     + f"; in-process {ref:.1f} ms ({'single' if c == 1 else 'batched'})"))
    rows.append(("cold start: /ping 200", f"{r['cold_start_ping_s']:.1f} s", ""))
    rows.append(("cold start: first answer", f"{r['cold_start_first_answer_s']:.1f} s", ""))
    w = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"  {a:<{w}}  {b:>16}  {c}")
    print(f"(1-minute load average at the end: {r['loadavg_1m']:.1f} on {cpus} CPUs)")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
