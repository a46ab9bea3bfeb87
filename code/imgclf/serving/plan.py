"""The thread plan: how many MMS workers, and how many torch threads each, for this container.

Workers x intra-op threads never exceed the CPUs the container may use
(:func:`imgclf.resources.cpu_count`, cgroup quota aware). On CPU the default is few workers with
many threads each: concurrent requests share one batched forward inside a worker
(:mod:`imgclf.serving.transformer`), so a second worker buys little throughput, while a lone
request gets every thread instead of ``1/workers`` of the machine. Past
``MAX_THREADS_PER_WORKER`` threads one forward scales poorly, so big machines get more workers.

The thread counts travel as ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` in the workers' environment
(:func:`worker_env`): they are in place before a worker imports torch, which sizes its OpenMP
pool at import.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from imgclf.resources import Gpu

log = logging.getLogger("imgclf.serving.plan")

MAX_DEFAULT_WORKERS = 4
MAX_THREADS_PER_WORKER = 8  # beyond this a single ResNet forward gains little per thread
CUDA_CONTEXT_BYTES = 600 * 2**20  # CUDA context + cuDNN/cuBLAS handles per worker, measured ~0.5 GB
ACTIVATION_BYTES = 512 * 2**20  # inference activations of a batch of a few 224px images
THREADS_ENV = "IMGCLF_TORCH_THREADS"


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    threads: int  # torch intra-op threads per worker
    gpus: int
    reason: str


def plan_workers(requested: int | None, model_bytes: int, cpus: int, gpus: list[Gpu],
                 ram_bytes: int) -> WorkerPlan:
    """Workers and threads per worker. Each worker holds its own copy of the model.

    GPU: per GPU as many workers as fit in 80% of its memory (context + 4x weights + activations
    each), at most 4 and at most the CPUs per GPU (each worker decodes images on a CPU).
    CPU: ``ceil(cpus / MAX_THREADS_PER_WORKER)`` workers (at most 4, and no more than half the
    RAM holds), the CPUs split evenly between them as torch threads.
    A requested worker count (SAGEMAKER_MODEL_SERVER_WORKERS) is kept; the threads still fit.
    """
    cpus = max(1, cpus)
    if gpus:
        mem = min(g.memory_bytes for g in gpus)
        per_worker = CUDA_CONTEXT_BYTES + 4 * model_bytes + ACTIVATION_BYTES
        fit = int(0.8 * mem // per_worker)
        if fit < 1:
            log.warning("one model copy needs about %.1f GB but a GPU has %.1f GB",
                        per_worker / 2**30, mem / 2**30)
        per_gpu = max(1, min(fit, MAX_DEFAULT_WORKERS, max(1, cpus // len(gpus))))
        workers = requested or per_gpu * len(gpus)
        if requested and -(-requested // len(gpus)) > max(fit, 1):
            log.warning("SAGEMAKER_MODEL_SERVER_WORKERS=%d puts %d model copies on a GPU where "
                        "about %d fit", requested, -(-requested // len(gpus)), fit)
        reason = (f"{len(gpus)} GPU(s) of {mem / 2**30:.0f} GB, ~{per_worker / 2**30:.1f}"
                  f" GB per worker, {cpus} CPUs")
        return WorkerPlan(workers, max(1, cpus // workers), len(gpus),
                          "requested" if requested else reason)
    per_worker_ram = 3 * model_bytes + 400 * 2**20  # weights, activations, torch runtime
    by_ram = max(1, int(ram_bytes * 0.5 // per_worker_ram))
    by_cpu = math.ceil(cpus / MAX_THREADS_PER_WORKER)
    workers = requested or max(1, min(by_cpu, MAX_DEFAULT_WORKERS, by_ram))
    reason = "requested" if requested else f"{cpus} CPUs, no GPU"
    return WorkerPlan(workers, max(1, cpus // workers), 0, reason)


def worker_env(plan: WorkerPlan) -> dict[str, str]:
    """Thread settings for the workers' environment (read by OpenMP/MKL at torch import, and by
    :func:`apply_threads` in the worker)."""
    n = str(plan.threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, THREADS_ENV: n}


def apply_threads(environ) -> int | None:
    """In a worker: torch's intra-op threads from the plan (one inter-op thread: a worker runs one
    forward at a time). Returns the thread count, or None when no plan was set."""
    raw = environ.get(THREADS_ENV)
    if not raw:
        return None
    import torch
    n = max(1, int(raw))
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran in this process
        pass
    return n
