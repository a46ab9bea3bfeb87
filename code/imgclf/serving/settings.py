"""Serving settings, each from an environment variable with a named default.

The SageMaker variables (``SAGEMAKER_*``) keep the meaning the inference toolkit gives them;
``IMGCLF_*`` ones are this project's. Everything has a default that works on a laptop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from imgclf.envvars import env_int
from imgclf.failure import SettingError

DEFAULT_MODEL_DIR = "/opt/ml/model"
DEFAULT_PORT = 8080
DEFAULT_BIND_HOST = "0.0.0.0"  # SageMaker sends /ping and /invocations to port 8080 from outside
DEFAULT_TIMEOUT_S = 60  # SAGEMAKER_MODEL_SERVER_TIMEOUT (seconds), the toolkit's default
DEFAULT_MAX_PAYLOAD_MB = 6  # SageMaker real-time invocation payload limit
DEFAULT_TOPK = 5
DEFAULT_MAX_IMAGES = 64  # images in one JSON request (one batch)
DEFAULT_STARTUP_TIMEOUT_S = 600  # SAGEMAKER_STARTUP_TIMEOUT: MMS start + every worker warm
# The toolkit's default JVM arguments (-XX:-UseContainerSupport), plus two for a JVM that only
# proxies requests to the Python workers and shares the CPUs with them: the serial collector (no
# parallel GC threads) and the C1 compiler only (compiles in a fraction of the CPU C2 spends, so
# the first few hundred requests pay less). Measured on 2 CPUs (README "Batching and the thread
# plan"): JVM CPU per request over the first 60 requests 7.7 -> 5.3 ms, after 300 3.8 -> 2.2 ms.
DEFAULT_VMARGS = "-XX:-UseContainerSupport -XX:+UseSerialGC -XX:TieredStopAtLevel=1"
BATCH_TIMEOUT_S = 600  # batch transform waits up to 600 s for each invocation
BATCH_MAX_PAYLOAD_MB = 100  # batch transform's MaxPayloadInMB ceiling
DEFAULT_MAX_BATCH_SIZE = 16  # IMGCLF_MAX_BATCH_SIZE: requests the front puts in one forward
DEFAULT_MAX_BATCH_DELAY_MS = 10  # IMGCLF_MAX_BATCH_DELAY_MS: see README "Batching" (measured)
DEFAULT_DRAIN_GRACE_S = 30  # IMGCLF_DRAIN_GRACE_S: SIGTERM lets requests in flight finish
DEFAULT_BODY_TIMEOUT_S = 30  # IMGCLF_BODY_TIMEOUT_S: a body slower than this gets 408


def _port_range(name: str) -> tuple[int, int] | None:
    """``LO-HI`` (or one port) in ``name``, as SageMaker sets SAGEMAKER_SAFE_PORT_RANGE."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    lo, _, hi = raw.partition("-")
    try:
        rng = (int(lo), int(hi or lo))
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not a port range like 10000-10999") from None
    if not 1 <= rng[0] <= rng[1] <= 65535:
        raise SettingError(f"{name}={raw!r} is not a port range within 1-65535")
    return rng


def model_dir() -> str:
    """``SM_MODEL_DIR`` if set (host runs and tests), else /opt/ml/model."""
    return os.environ.get("SM_MODEL_DIR") or DEFAULT_MODEL_DIR


def default_topk() -> int:
    return env_int("IMGCLF_DEFAULT_TOPK", DEFAULT_TOPK, minimum=1)


def max_images() -> int:
    return env_int("IMGCLF_MAX_IMAGES", DEFAULT_MAX_IMAGES, minimum=1)


def batch_mode() -> bool:
    """``SAGEMAKER_BATCH=true``: batch transform is the caller (larger payloads, longer timeout)."""
    return os.environ.get("SAGEMAKER_BATCH", "").strip().lower() in ("true", "1", "yes")


def max_payload_bytes() -> int:
    """SAGEMAKER_MAX_PAYLOAD_IN_MB (6 by default); in batch mode capped at 100 as batch transform's
    MaxPayloadInMB is."""
    mb = env_int("SAGEMAKER_MAX_PAYLOAD_IN_MB", DEFAULT_MAX_PAYLOAD_MB, minimum=1)
    if batch_mode():
        mb = min(mb, BATCH_MAX_PAYLOAD_MB)
    return mb * 1024 * 1024


@dataclass
class ServerSettings:
    """What ``serve`` needs, read once at start (see README "Serving" for each variable)."""

    model_dir: str
    port: int
    bind_host: str
    workers: int | None  # None: computed from CPUs/GPUs and model size
    timeout_s: int
    max_payload_bytes: int
    startup_timeout_s: int
    vmargs: str
    run_dir: str | None  # MMS config, JVM temp dir and worker sockets; None: a fresh temp dir
    mms_config_file: str | None  # None: <run_dir>/mms.properties
    safe_port_range: tuple[int, int] | None  # where internal ports may be taken
    batch: bool  # SAGEMAKER_BATCH
    max_batch_size: int
    max_batch_delay_ms: int
    drain_grace_s: int
    body_timeout_s: int

    @classmethod
    def from_env(cls) -> "ServerSettings":
        batch = batch_mode()
        port = env_int("SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT, minimum=1)
        if port > 65535:
            raise SettingError(f"SAGEMAKER_BIND_TO_PORT={port} is not a port (1-65535)")
        return cls(
            model_dir=model_dir(),
            port=port,
            bind_host=os.environ.get("IMGCLF_BIND_HOST") or DEFAULT_BIND_HOST,
            workers=env_int("SAGEMAKER_MODEL_SERVER_WORKERS", None, minimum=1),
            timeout_s=env_int("SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS",
                              env_int("SAGEMAKER_MODEL_SERVER_TIMEOUT",
                                      BATCH_TIMEOUT_S if batch else DEFAULT_TIMEOUT_S, minimum=1),
                              minimum=1),
            max_payload_bytes=max_payload_bytes(),
            startup_timeout_s=env_int("SAGEMAKER_STARTUP_TIMEOUT", DEFAULT_STARTUP_TIMEOUT_S,
                                      minimum=1),
            vmargs=os.environ.get("SAGEMAKER_MODEL_SERVER_VMARGS", DEFAULT_VMARGS),
            run_dir=os.environ.get("IMGCLF_SERVE_RUN_DIR") or None,
            mms_config_file=os.environ.get("IMGCLF_MMS_CONFIG_FILE") or None,
            safe_port_range=_port_range("SAGEMAKER_SAFE_PORT_RANGE"),
            batch=batch,
            max_batch_size=env_int("IMGCLF_MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE, minimum=1),
            max_batch_delay_ms=env_int("IMGCLF_MAX_BATCH_DELAY_MS", DEFAULT_MAX_BATCH_DELAY_MS,
                                       minimum=0),
            drain_grace_s=env_int("IMGCLF_DRAIN_GRACE_S", DEFAULT_DRAIN_GRACE_S, minimum=0),
            body_timeout_s=env_int("IMGCLF_BODY_TIMEOUT_S", DEFAULT_BODY_TIMEOUT_S, minimum=1),
        )
