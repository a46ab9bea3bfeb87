"""``serve``: check the model, start multi-model-server behind the front, stop it cleanly.

    SM_MODEL_DIR=local/demo/model SAGEMAKER_BIND_TO_PORT=8080 python -m imgclf.serving.server

1. Pre-flight: load the artifact on CPU and run a synthetic image through the handler. A
   missing or broken model exits 2 with the reason, before any port is bound, so SageMaker marks
   the endpoint failed instead of routing traffic to a dead model.
2. Bind the public port with :mod:`imgclf.serving.front` (/ping answers 503 for now).
3. Start MMS (the JVM, as ``multi-model-server --start`` would, minus its global pid file) on
   Unix sockets (:func:`mms_addresses`), in its own process group, with its config and sockets
   in a private run directory (never /etc or the working directory), logs to stdout, and the
   handler service of this package. The model is registered through MMS's management API with
   the workers of the thread plan (:mod:`imgclf.serving.plan`) and MMS batch size 1: the front
   batches concurrent requests itself (IMGCLF_MAX_BATCH_SIZE / IMGCLF_MAX_BATCH_DELAY_MS), one
   MMS job per batch (:mod:`imgclf.serving.bundle`). Workers load and warm the model in
   ``initialize``.
4. When every worker is READY in the management API (MMS's own /ping says "Healthy" long
   before), /ping turns 200: the first request pays no loading.
5. SIGTERM/SIGINT: the front stops accepting and lets requests in flight finish (up to
   IMGCLF_DRAIN_GRACE_S), then the JVM and every worker process of its group are stopped.
   MMS dying stops the server too.

Exit status: 0 after SIGTERM/SIGINT, 1 if MMS fails or never gets healthy, 2 for a bad model or
configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import psutil

from imgclf import images, resources
from imgclf.serving import bundle, content_types, fastpath, handler, settings
from imgclf.serving.front import MAX_HEAD, Front
from imgclf.serving.plan import WorkerPlan, plan_workers, worker_env
from imgclf.serving.settings import ServerSettings

log = logging.getLogger("imgclf.serving.server")

HANDLER_SERVICE = "imgclf.serving.handler_service"
MMS_MAIN_CLASS = "com.amazonaws.ml.mms.ModelServer"
LOG4J_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.xml")
CODE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STOP_GRACE_S = 10


# ----------------------------------------------------------------------------------- MMS
MMS_MAX_PORT = 32767  # MMS rejects higher port numbers ("Invalid port number")
SOCKET_PATH_MAX = 107  # bytes of a Unix socket path: sun_path is 108 with its NUL (Linux)
# MMS's inference and management sockets in the run dir (the workers' .mms.sock.9000 and up,
# there too, are shorter)
MMS_SOCKETS = ("mms-inference.sock", "mms-management.sock")


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


def check_run_dir(run_dir: str, what: str) -> None:
    """ValueError naming where the run dir came from (``what``) when the sockets MMS and its
    workers listen on there would not fit in ``sun_path`` (the workers could not bind: "AF_UNIX
    path too long", and MMS's model registration failed a minute later with a 500)."""
    room = SOCKET_PATH_MAX - len(os.sep) - max(map(len, MMS_SOCKETS))
    if len(os.fsencode(os.path.abspath(run_dir))) > room:
        raise ValueError(f"{what} {run_dir!r} is too long for the Unix sockets MMS and its workers "
                         f"listen on there: at most {room} bytes")


def mms_addresses(run_dir: str, port_range: tuple[int, int] | None = None,
                  env: dict[str, str] | None = None) -> tuple[str, str]:
    """MMS's inference and management addresses, which only the front uses: Unix sockets in
    the run dir (MMS's ``unix:/path``; :func:`check_run_dir` made sure they fit), or loopback TCP
    ports (from ``SAGEMAKER_SAFE_PORT_RANGE``) where MMS runs without native IO
    (``MMS_USE_NATIVE_IO=false``), which its Unix sockets need.

    Sockets, because a request crosses them twice (in and out): 0.1-0.25 ms less per request
    than loopback TCP (README "Batching"); no port can be taken by another process between
    picking and binding it; and in a run dir of mode 0700 (``mkdtemp``) no other user of the
    host can reach MMS past the front's checks."""
    env = os.environ if env is None else env
    if env.get("MMS_USE_NATIVE_IO", "true").strip().lower() != "false":
        paths = [os.path.join(os.path.abspath(run_dir), name) for name in MMS_SOCKETS]
        for path in paths:  # left by a server killed with SIGKILL: MMS cannot bind over it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return f"unix:{paths[0]}", f"unix:{paths[1]}"
    inference_port = free_port(port_range=port_range)
    management_port = inference_port
    while management_port == inference_port:
        management_port = free_port(port_range=port_range)
    return f"http://127.0.0.1:{inference_port}", f"http://127.0.0.1:{management_port}"


def mms_properties(inference: str, management: str, plan: WorkerPlan,
                   s: ServerSettings) -> str:
    props = {
        "inference_address": inference,
        "management_address": management,
        "default_service_handler": HANDLER_SERVICE,
        "default_workers_per_model": plan.workers,
        "load_models": "",  # none at start: serve registers the model with its batch size
        "number_of_gpu": plan.gpus,
        # seconds; MMS's plain default_response_timeout is in MINUTES (x60 in ConfigManager),
        # so the toolkit's SAGEMAKER_MODEL_SERVER_TIMEOUT=60 means an hour there
        "default_response_timeout_seconds": s.timeout_s,
        # the front's bundles (imgclf.serving.bundle), not only one request's body
        "max_request_size": bundle.request_limit(s.max_payload_bytes, s.max_batch_size,
                                                 MAX_HEAD),
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
            "--python", sys.executable, "-f", config_file, "-s", "/"]


def mms_env(plan: WorkerPlan, run_dir: str, bundle_token: str = "") -> dict[str, str]:
    env = dict(os.environ)
    env[bundle.TOKEN_ENV] = bundle_token  # the workers take bundles only from our front
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = CODE_DIR + (os.pathsep + path if path else "")
    env.update(worker_env(plan))  # before any worker imports torch
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


def model_workers(jvm_pid: int) -> list[int]:
    """PIDs of the MMS worker processes that hold the model. MMS's Python worker is a listener
    that forks one process per connection from the JVM; the forks load the model and answer."""
    try:
        tree = psutil.Process(jvm_pid).children(recursive=True)
    except psutil.Error:
        return []
    listeners, forks = set(), []
    for p in tree:
        try:
            if "model_service_worker" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                if p.ppid() == jvm_pid:
                    listeners.add(p.pid)
                else:
                    forks.append(p)
        except psutil.Error:
            pass
    return [p.pid for p in forks if p.ppid() in listeners]


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
    served = handler.load_model(model_dir, "cpu", warm=True, inference="eager")  # workers choose
    size = sum(t.numel() * t.element_size() for t in
               list(served.model.parameters()) + list(served.model.buffers()))
    m = served.meta
    log.info("model OK: %s, %d classes, %dpx (resize %d), %.1f MB, checked in %.1f s",
             m.arch, m.num_classes, m.image_size, m.resize_size, size / 1e6, time.monotonic() - t0)
    del served
    gc.collect()
    return size


async def wait_for_workers(front: Front, proc: subprocess.Popen, plan: WorkerPlan,
                           s: ServerSettings, stop: asyncio.Event, t0: float) -> bool:
    """Register the model once MMS's management API answers, then wait until every worker is
    READY there (MMS reports READY only after ``initialize`` - load and warm - returned)."""
    registered = False
    probe_body = handler.synthetic_jpeg(64)
    while not stop.is_set():
        if proc.poll() is not None:
            log.error("MMS exited with status %s", proc.returncode)
            return False
        if time.monotonic() - t0 > s.startup_timeout_s:
            states = await front.worker_states()
            log.error("%d of %d workers ready after %d s (SAGEMAKER_STARTUP_TIMEOUT); MMS says %r",
                      sum(w.get("status") == "READY" for w in states), plan.workers,
                      s.startup_timeout_s, states)
            return False
        if not registered:
            try:
                await front.register(os.path.abspath(s.model_dir), plan.workers)
                registered = True
                log.info("model registered: %d worker(s); the front batches up to %d requests "
                         "(waiting up to %d ms for company only right after a batch)",
                         plan.workers, front.max_batch_size, s.max_batch_delay_ms)
            except OSError:  # aiohttp.ClientConnectorError: MMS not listening yet
                pass
            except RuntimeError as e:
                log.error("%s", e)
                return False
        elif (len(await front.ready_workers()) >= plan.workers
              and await front.probe(probe_body, content_types.JPEG)):
            return True
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass
    return False


async def run(s: ServerSettings, plan: WorkerPlan, run_dir: str) -> int:
    inference, management = mms_addresses(run_dir, s.safe_port_range)
    config_file = s.mms_config_file or os.path.join(run_dir, "mms.properties")
    with open(config_file, "w") as f:
        f.write(mms_properties(inference, management, plan, s))
    jvm: list[int] = []  # the JVM's pid, once started
    token = secrets.token_hex(16)
    front = Front.from_settings(s, plan.workers, inference, management,
                                live_workers=lambda: len(model_workers(jvm[0])) if jvm else 0,
                                bundle_token=token)
    await front.start(s.bind_host, s.port, s.drain_grace_s)
    log.info("listening on %s:%d (/ping 503 until the workers are warm)%s", s.bind_host, s.port,
             "; batch transform mode" if s.batch else "")

    cmd = mms_command(config_file, s, run_dir)
    log.info("starting MMS with %d worker(s) x %d thread(s) (%s); config %s", plan.workers,
             plan.threads, plan.reason, config_file)
    proc = subprocess.Popen(cmd, env=mms_env(plan, run_dir, token), cwd=run_dir,
                            start_new_session=True, preexec_fn=_die_with_parent)
    jvm.append(proc.pid)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda sig=sig: (received.append(sig), stop.set()))

    t0, rc = time.monotonic(), 0
    try:
        if await wait_for_workers(front, proc, plan, s, stop, t0):
            front.ready = True
            log.info("all %d worker(s) loaded and warm after %.1f s: /ping now 200",
                     plan.workers, time.monotonic() - t0)
        elif not stop.is_set():
            rc = 1
        while rc == 0 and not stop.is_set():
            if proc.poll() is not None:
                log.error("MMS exited with status %s", proc.returncode)
                rc = 1
                break
            if os.getpid() == 1:  # no init in front of us (tini is PID 1 in the image)
                reap_orphans(proc.pid)
            try:
                await asyncio.wait_for(stop.wait(), 2)
            except asyncio.TimeoutError:
                pass
    finally:
        if received:
            log.info("%s received: stopping (requests in flight get up to %d s)",
                     signal.Signals(received[0]).name, s.drain_grace_s)
        await front.stop()
        await loop.run_in_executor(None, stop_process_group, proc)
        log.info("MMS and its workers stopped")
    return rc


def _refuse(message: str) -> int:
    """Exit status 2 with ``message``: in the log, and as the one line on stderr."""
    log.error(message)
    print(message, file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s [%(levelname)s] %(name)s - %(message)s", force=True)
    try:
        s = ServerSettings.from_env()
        # read by the workers per request or at load: refused here, before anything starts
        settings.default_topk(), settings.max_images(), fastpath.mode(), images.max_pixels()
        if s.run_dir:
            check_run_dir(s.run_dir, "IMGCLF_SERVE_RUN_DIR")
    except ValueError as e:
        return _refuse(f"bad serving configuration: {e}")
    try:
        model_bytes = preflight(s.model_dir)
    except Exception as e:  # ArtifactError, ModelError, OSError, torch errors...
        return _refuse(f"cannot serve the model in {s.model_dir!r}: {type(e).__name__}: {e}")
    plan = plan_workers(s.workers, model_bytes, resources.cpu_count(), resources.visible_gpus(),
                        psutil.virtual_memory().total)
    run_dir = s.run_dir or tempfile.mkdtemp(prefix="imgclf-serve-")
    os.makedirs(run_dir, exist_ok=True)
    if not s.run_dir:
        try:
            check_run_dir(run_dir, "the temp dir under TMPDIR")
        except ValueError as e:
            os.rmdir(run_dir)
            return _refuse(f"bad serving configuration: {e}")
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
