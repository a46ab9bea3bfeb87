"""``serve``: check the model, start multi-model-server behind the gate, stop it cleanly.

    SM_MODEL_DIR=local/demo/model SAGEMAKER_BIND_TO_PORT=8080 python -m imgclf.serving.server

1. Pre-flight: load the artifact on CPU and run a synthetic image through the handler. A
   missing or broken model exits 2 with the reason, before any port is bound, so SageMaker marks
   the endpoint failed instead of routing traffic to a dead model.
2. Bind the public port with :mod:`imgclf.serving.gate` (/ping answers 503 for now).
3. Start MMS (the JVM, as ``multi-model-server --start`` would, minus its global pid file) on
   loopback ports, in its own process group, with a config written to a private run directory
   (never /etc or the working directory), logs to stdout, and the handler service of this
   package. Workers load and warm the model in ``initialize``.
4. When every worker has loaded and warmed the model (each leaves a marker file; MMS's own
   status says "Healthy" long before), /ping turns 200: the first request pays no loading.
5. SIGTERM/SIGINT (or MMS dying) stops the JVM and every worker process of its group.

Exit status: 0 after SIGTERM/SIGINT, 1 if MMS fails or never gets healthy, 2 for a bad model or
configuration.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import psutil

from imgclf.serving import handler
from imgclf.serving.gate import Gate
from imgclf.serving.settings import ServerSettings

log = logging.getLogger("imgclf.serving.server")

HANDLER_SERVICE = "imgclf.serving.handler_service"
MMS_MAIN_CLASS = "com.amazonaws.ml.mms.ModelServer"
LOG4J_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.xml")
CODE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_DEFAULT_WORKERS = 4
CUDA_CONTEXT_BYTES = 600 * 2**20  # CUDA context + cuDNN/cuBLAS handles per worker, measured ~0.5 GB
ACTIVATION_BYTES = 512 * 2**20  # inference activations of a batch of a few 224px images
STOP_GRACE_S = 10


# ------------------------------------------------------------------------------ worker plan
def cpu_count() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2/v1 CPU quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def gpu_memory_bytes() -> list[int]:
    """Total memory of each visible GPU via nvidia-smi (no CUDA context in this process)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        mem = [int(float(x)) * 2**20 for x in out.split() if x.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() not in ("", "all"):
        idx = [int(i) for i in visible.split(",") if i.strip().isdigit()]
        if idx:  # GPU-/MIG- UUIDs: keep nvidia-smi's list rather than planning for no GPU
            mem = [mem[i] for i in idx if i < len(mem)]
    return mem


@dataclass
class WorkerPlan:
    workers: int
    threads: int  # torch intra-op threads per worker
    gpus: int
    reason: str


def plan_workers(requested: int | None, model_bytes: int, cpus: int, gpu_mem: list[int],
                 ram_bytes: int) -> WorkerPlan:
    """Workers and threads per worker. Each worker holds its own copy of the model.

    GPU: per GPU as many workers as fit in 80% of its memory (context + 4x weights + activations
    each), at most 4 and at most the CPUs per GPU (each worker decodes images on a CPU).
    CPU: one worker per CPU up to 4, the CPUs split between them as torch threads, and no more
    workers than half the RAM holds.
    """
    if gpu_mem:
        per_worker = CUDA_CONTEXT_BYTES + 4 * model_bytes + ACTIVATION_BYTES
        fit = int(0.8 * min(gpu_mem) // per_worker)
        if fit < 1:
            log.warning("one model copy needs about %.1f GB but a GPU has %.1f GB",
                        per_worker / 2**30, min(gpu_mem) / 2**30)
        per_gpu = max(1, min(fit, MAX_DEFAULT_WORKERS, max(1, cpus // len(gpu_mem))))
        workers = requested or per_gpu * len(gpu_mem)
        if requested and -(-requested // len(gpu_mem)) > max(fit, 1):
            log.warning("SAGEMAKER_MODEL_SERVER_WORKERS=%d puts %d model copies on a GPU where "
                        "about %d fit", requested, -(-requested // len(gpu_mem)), fit)
        reason = (f"{len(gpu_mem)} GPU(s) of {min(gpu_mem) / 2**30:.0f} GB, ~{per_worker / 2**30:.1f}"
                  f" GB per worker, {cpus} CPUs")
        return WorkerPlan(workers, max(1, cpus // workers), len(gpu_mem),
                          "requested" if requested else reason)
    per_worker_ram = 3 * model_bytes + 400 * 2**20  # weights, activations, torch runtime
    by_ram = max(1, int(ram_bytes * 0.5 // per_worker_ram))
    workers = requested or max(1, min(cpus, MAX_DEFAULT_WORKERS, by_ram))
    reason = "requested" if requested else f"{cpus} CPUs, no GPU"
    return WorkerPlan(workers, max(1, cpus // workers), 0, reason)


# ----------------------------------------------------------------------------------- MMS
MMS_MAX_PORT = 32767  # MMS rejects higher port numbers ("Invalid port number")


def free_port(host: str = "127.0.0.1", port_range: tuple[int, int] | None = None) -> int:
    """A free TCP port MMS accepts: from SAGEMAKER_SAFE_PORT_RANGE if set, else 10000-32767."""
    import random
    lo, hi = port_range or (10000, MMS_MAX_PORT)
    candidates = list(range(lo, min(hi, MMS_MAX_PORT) + 1))
    random.shuffle(candidates)
    for port in candidates[:2000]:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {lo}-{min(hi, MMS_MAX_PORT)}")


def mms_properties(inference_port: int, management_port: int, plan: WorkerPlan,
                   s: ServerSettings) -> str:
    props = {
        "inference_address": f"http://127.0.0.1:{inference_port}",
        "management_address": f"http://127.0.0.1:{management_port}",
        "default_service_handler": HANDLER_SERVICE,
        "default_workers_per_model": plan.workers,
        "number_of_gpu": plan.gpus,
        # seconds; MMS's plain default_response_timeout is in MINUTES (x60 in ConfigManager),
        # so the toolkit's SAGEMAKER_MODEL_SERVER_TIMEOUT=60 means an hour there
        "default_response_timeout_seconds": s.timeout_s,
        "max_request_size": s.max_payload_bytes,
        "decode_input_request": "false",
        "enable_envvars_config": "true",  # MMS_* variables still tune MMS, as in the toolkit
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def mms_command(config_file: str, s: ServerSettings, run_dir: str) -> list[str]:
    import mms
    mms_home = os.path.dirname(os.path.dirname(os.path.realpath(mms.__file__)))
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else "java"
    return [java, f"-Dmodel_server_home={mms_home}",
            f"-Dlog4j.configurationFile=file://{LOG4J_CONFIG}",
            f"-Djava.io.tmpdir={run_dir}",  # worker unix sockets: private, no clash between servers
            *s.vmargs.split(),
            "-cp", f".:{os.path.join(mms_home, 'mms', 'frontend', '*')}", MMS_MAIN_CLASS,
            "--python", sys.executable, "-f", config_file,
            "-s", "/", "-m", f"model={os.path.abspath(s.model_dir)}"]


def mms_env(plan: WorkerPlan, run_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = CODE_DIR + (os.pathsep + path if path else "")
    env["OMP_NUM_THREADS"] = env["IMGCLF_TORCH_THREADS"] = str(plan.threads)
    env["LOG_LOCATION"] = env["METRICS_LOCATION"] = env["TEMP"] = run_dir
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _die_with_parent() -> None:
    """In the child: get SIGTERM if `serve` itself is killed (SIGKILL can't be trapped)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def stop_process_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the JVM and its whole process group, SIGKILL whatever is left after ``grace_s``.

    MMS workers fork per connection; on SIGTERM the JVM stops its direct children but the forks
    can outlive it. They keep the group id, so killing the group reaches them all.
    """
    try:
        members = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        members = []
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for p in members:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
        _, members = psutil.wait_procs(members, timeout=wait)
        members += group_members(proc.pid)
        if not members:
            break
        log.warning("%d MMS process(es) still alive after SIGTERM; sending SIGKILL", len(members))
    if proc.poll() is None:
        proc.wait()


def group_members(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (OSError, psutil.Error):
            pass
    return out


def reap_orphans(keep: int) -> None:
    """As PID 1 in a container, collect zombies re-parented to us (not the JVM we wait for)."""
    for child in psutil.Process().children():
        try:
            if child.pid != keep and child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (OSError, psutil.Error):
            pass


# ---------------------------------------------------------------------------------- serve
def preflight(model_dir: str) -> int:
    """Load and check the artifact on CPU; returns the model's parameter+buffer bytes."""
    t0 = time.monotonic()
    served = handler.load_model(model_dir, "cpu", warm=True)
    size = sum(t.numel() * t.element_size() for t in
               list(served.model.parameters()) + list(served.model.buffers()))
    m = served.meta
    log.info("model OK: %s, %d classes, %dpx (resize %d), %.1f MB, checked in %.1f s",
             m.arch, m.num_classes, m.image_size, m.resize_size, size / 1e6, time.monotonic() - t0)
    del served
    gc.collect()
    return size


async def run(s: ServerSettings, plan: WorkerPlan, run_dir: str) -> int:
    inference_port = free_port(port_range=s.safe_port_range)
    management_port = inference_port
    while management_port == inference_port:
        management_port = free_port(port_range=s.safe_port_range)
    config_file = s.mms_config_file or os.path.join(run_dir, "mms.properties")
    with open(config_file, "w") as f:
        f.write(mms_properties(inference_port, management_port, plan, s))
    ready_dir = os.path.join(run_dir, "ready")
    os.makedirs(ready_dir, exist_ok=True)
    gate = Gate("127.0.0.1", inference_port, s.max_payload_bytes,
                live_workers=lambda: len(handler.ready_workers(ready_dir)))
    server = await asyncio.start_server(gate.handle, s.bind_host, s.port, limit=64 * 1024,
                                        reuse_address=True)
    log.info("listening on %s:%d (/ping 503 until the workers are warm)", s.bind_host, s.port)

    cmd = mms_command(config_file, s, run_dir)
    log.info("starting MMS with %d worker(s) x %d thread(s) (%s); config %s", plan.workers,
             plan.threads, plan.reason, config_file)
    env = mms_env(plan, run_dir)
    env[handler.READY_DIR_ENV] = ready_dir
    proc = subprocess.Popen(cmd, env=env, cwd=run_dir, start_new_session=True,
                            preexec_fn=_die_with_parent)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda sig=sig: (received.append(sig), stop.set()))

    t0, rc = time.monotonic(), 0
    try:
        while not stop.is_set():
            if proc.poll() is not None:
                log.error("MMS exited with status %s", proc.returncode)
                rc = 1
                break
            if not gate.ready:
                healthy, status = await gate.upstream_health()
                loaded = len(handler.ready_workers(ready_dir))
                if healthy and loaded >= plan.workers:
                    gate.ready = True
                    log.info("all %d worker(s) loaded and warm after %.1f s: /ping now 200",
                             plan.workers, time.monotonic() - t0)
                elif time.monotonic() - t0 > s.startup_timeout_s:
                    log.error("%d of %d workers loaded after %d s (SAGEMAKER_STARTUP_TIMEOUT); "
                              "MMS says %r", loaded, plan.workers, s.startup_timeout_s, status)
                    rc = 1
                    break
            if os.getpid() == 1:
                reap_orphans(proc.pid)
            try:
                await asyncio.wait_for(stop.wait(), 0.2 if not gate.ready else 2)
            except asyncio.TimeoutError:
                pass
    finally:
        if received:
            log.info("%s received: stopping", signal.Signals(received[0]).name)
        server.close()
        await loop.run_in_executor(None, stop_process_group, proc)
        log.info("MMS and its workers stopped")
    return rc


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s [%(levelname)s] %(name)s - %(message)s", force=True)
    try:
        s = ServerSettings.from_env()
    except ValueError as e:
        log.error("bad serving configuration: %s", e)
        return 2
    try:
        model_bytes = preflight(s.model_dir)
    except Exception as e:  # ArtifactError, ModelError, OSError, torch errors...
        msg = f"cannot serve the model in {s.model_dir!r}: {type(e).__name__}: {e}"
        log.error(msg)
        print(msg, file=sys.stderr, flush=True)
        return 2
    plan = plan_workers(s.workers, model_bytes, cpu_count(), gpu_memory_bytes(),
                        psutil.virtual_memory().total)
    run_dir = s.run_dir or tempfile.mkdtemp(prefix="imgclf-serve-")
    os.makedirs(run_dir, exist_ok=True)
    try:
        return asyncio.run(run(s, plan, run_dir))
    except OSError as e:  # e.g. the port is taken
        log.error("cannot start: %s", e)
        return 1
    finally:
        if not s.run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
