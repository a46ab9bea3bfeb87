"""What this process may use: CPUs (cgroup quota aware) and visible GPUs. One definition for
serving's thread plan and the training profiler.

    python -c "from imgclf import resources; print(resources.cpu_count(), resources.visible_gpus())"

A container limited with ``--cpus 2`` (or an ECS/SageMaker task with a CPU share) still sees
every host CPU in ``os.cpu_count()`` and in its affinity mask; only the cgroup's CFS quota says
that it gets two. Sizing torch's threads by the host count then oversubscribes the quota and
the kernel throttles every thread.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup's CFS quota (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``); None when unlimited or unreadable. ``root`` is the mounted cgroup
    tree (tests point it at a fake one)."""
    v2 = _read(os.path.join(root, "cpu.max"))
    if v2:
        fields = v2.split()
        if fields[0] == "max":
            return None
        try:
            quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100_000
        except ValueError:
            return None
        return quota / period if quota > 0 and period > 0 else None
    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu", ""):
        quota = _read(os.path.join(root, sub, "cpu.cfs_quota_us"))
        period = _read(os.path.join(root, sub, "cpu.cfs_period_us"))
        if quota is None or period is None:
            continue
        try:
            q, p = int(quota), int(period)
        except ValueError:
            return None
        return q / p if q > 0 and p > 0 else None  # -1: no quota
    return None


def affinity_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # macOS


def cpu_count(root: str = CGROUP_ROOT) -> int:
    """CPUs this process may use: the affinity mask, capped by the cgroup CPU quota (a quota of
    1.5 CPUs counts as 1: threads beyond the quota only get throttled)."""
    n = affinity_cpus()
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        n = min(n, max(1, math.floor(limit)))
    return max(1, n)


@dataclass(frozen=True)
class Gpu:
    index: int  # CUDA ordinal inside this process (after CUDA_VISIBLE_DEVICES)
    name: str
    memory_bytes: int


def _nvidia_smi() -> list[tuple[int, str, str, int]]:
    """(host index, UUID, name, memory bytes) of every GPU nvidia-smi lists; [] without one."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,name,memory.total",
                              "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        try:
            gpus.append((int(parts[0]), parts[1], parts[2], int(float(parts[3])) * 2**20))
        except ValueError:
            continue
    return gpus


def select_visible(listed: list[tuple[int, str, str, int]], visible: str | None) -> list[Gpu]:
    """Apply CUDA_VISIBLE_DEVICES (indices, ``GPU-``/``MIG-`` UUIDs or their prefixes, ``all``,
    empty = none) to nvidia-smi's list, in the variable's order, as CUDA does: the first entry
    that matches nothing ends the list."""
    if visible is None or visible.strip().lower() == "all":
        chosen = listed
    else:
        chosen = []
        for token in (t.strip() for t in visible.split(",")):
            if not token:
                break
            if token.isdigit():
                match = [g for g in listed if g[0] == int(token)]
            elif token.startswith("MIG-"):
                # MIG instances are not in nvidia-smi's --query-gpu list: keep the whole list
                # rather than planning for no GPU at all
                return [Gpu(i, g[2], g[3]) for i, g in enumerate(listed)]
            else:
                match = [g for g in listed if g[1].startswith(token)]
            if not match:
                break
            chosen.append(match[0])
    return [Gpu(i, g[2], g[3]) for i, g in enumerate(chosen)]


def visible_gpus() -> list[Gpu]:
    """The GPUs CUDA will show this process (no CUDA context is created here)."""
    return select_visible(_nvidia_smi(), os.environ.get("CUDA_VISIBLE_DEVICES"))
