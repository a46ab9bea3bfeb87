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
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
