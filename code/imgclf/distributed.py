"""Multi-GPU and multi-host training with torch.distributed (DDP).

On SageMaker each host runs ``train`` once. When the job has several hosts (``SM_HOSTS``) or a
host has several GPUs (``SM_NUM_GPUS``), :func:`maybe_relaunch` re-executes train.py under
``torch.distributed.run`` (torchrun): one process per GPU (or ``--processes-per-host``), node rank
= position of ``SM_CURRENT_HOST`` in ``SM_HOSTS``, rendezvous on the first host. Inside the
children (``LOCAL_RANK`` set), :func:`init` joins the process group: NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from imgclf.failure import TrainingError

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def cluster_from_env() -> tuple[list[str], str]:
    hosts = json.loads(os.environ.get("SM_HOSTS", "[]")) or ["localhost"]
    current = os.environ.get("SM_CURRENT_HOST", hosts[0])
    return hosts, current


def processes_per_host(requested: int) -> int:
    if requested > 0:
        return requested
    gpus = int(os.environ.get("SM_NUM_GPUS", torch.cuda.device_count()) or 0)
    return max(1, gpus)


def maybe_relaunch(argv: list[str], requested_procs: int, master_port: int) -> int | None:
    """Run train.py under torchrun when more than one process is needed; None = run here."""
    if "LOCAL_RANK" in os.environ:  # already a torchrun child
        return None
    hosts, current = cluster_from_env()
    nproc = processes_per_host(requested_procs)
    if len(hosts) == 1 and nproc == 1:
        return None
    node_rank = hosts.index(current) if current in hosts else 0
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={len(hosts)}",
           f"--node-rank={node_rank}", f"--nproc-per-node={nproc}",
           f"--master-addr={hosts[0]}", f"--master-port={master_port}",
           os.path.abspath(sys.argv[0]), *argv]
    log.info("distributed: %d host(s) x %d process(es); host %s is node %d; launching %s",
             len(hosts), nproc, current, node_rank, " ".join(cmd[:8]))
    return subprocess.call(cmd)


def init() -> DistInfo:
    if "LOCAL_RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    log.info("joined process group: rank %d of %d (%s)", info.rank, info.world, backend)
    return info


def any_rank(flag: bool, device) -> bool:
    """True on every rank when ``flag`` is true on at least one (a no-op without DDP)."""
    if not enabled():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def enabled() -> bool:
    """True inside an initialised process group (the one definition of "is DDP on")."""
    return dist.is_available() and dist.is_initialized()


def from_rank0(decide):
    """Rank 0 runs ``decide()``; every rank returns its result (or raises its error).

    For decisions that must agree (resume or not, from which checkpoint): ranks that decided
    on their own could disagree (a host without the synced files) and then hang in the first
    collective. The result travels by ``broadcast_object_list``, so the other hosts need no
    copy of the file.
    """
    if not enabled():
        return decide()
    payload = [None]
    if dist.get_rank() == 0:
        try:
            payload = [("ok", decide())]
        except Exception as e:
            dist.broadcast_object_list([("error", str(e))], src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if kind == "error":
        raise TrainingError(value)
    return value


FAILURE_KEY = "imgclf/failure"


def shared_failure(message: str) -> str:
    """The failure reason every rank reports: the first one published wins.

    A rank that fails publishes ``rank N: reason`` in the process group's store (torchrun's
    agent hosts it, so it outlives the workers) before it exits; the other ranks then fail
    too (their collectives see the closed connection, or torchrun stops them with SIGTERM) and
    report the same first reason instead of "connection closed by peer". Without DDP, or when
    the store is gone, the rank's own message.
    """
    if not enabled():
        return message
    try:
        store = dist.distributed_c10d._get_default_store()
        winner = store.compare_set(FAILURE_KEY, "", f"rank {dist.get_rank()}: {message}")
        return winner.decode() if isinstance(winner, bytes) else str(winner)
    except Exception as e:   # the store itself died with the job
        log.debug("distributed: cannot share the failure reason (%s)", e)
        return message


def cleanup() -> None:
    if enabled():
        dist.destroy_process_group()
