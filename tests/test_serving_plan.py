"""The one CPU/GPU count (imgclf.resources) under fake cgroup trees, and the thread plan built
on it (imgclf.serving.plan): workers x threads fit the quota, set before torch is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from imgclf import resources
from imgclf.diagnostics import profiler
from imgclf.serving.plan import THREADS_ENV, WorkerPlan, plan_workers, worker_env

GB = 2**30
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cgroup_v2(tmp_path, cpu_max: str):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return str(tmp_path)


def cgroup_v1(tmp_path, quota: int, period: int = 100_000, sub: str = "cpu,cpuacct"):
    d = tmp_path / sub
    d.mkdir()
    (d / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (d / "cpu.cfs_period_us").write_text(f"{period}\n")
    return str(tmp_path)


# ------------------------------------------------------------------------------- resources
@pytest.mark.parametrize("cpu_max,limit", [("max 100000", None), ("200000 100000", 2.0),
                                           ("150000 100000", 1.5), ("50000 100000", 0.5)])
def test_cgroup_v2_quota(tmp_path, cpu_max, limit):
    assert resources.cgroup_cpu_limit(cgroup_v2(tmp_path, cpu_max)) == limit


def test_cgroup_v1_quota(tmp_path):
    assert resources.cgroup_cpu_limit(cgroup_v1(tmp_path, 300_000)) == 3.0
    other = tmp_path / "other"
    other.mkdir()
    assert resources.cgroup_cpu_limit(cgroup_v1(other, -1, sub="cpu")) is None  # no quota


def test_cpu_count_is_capped_by_the_quota_and_the_affinity_mask(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "affinity_cpus", lambda: 16)
    assert resources.cpu_count(cgroup_v2(tmp_path, "400000 100000")) == 4
    assert resources.cpu_count(cgroup_v2(tmp_path, "150000 100000")) == 1  # 1.5 -> 1
    assert resources.cpu_count(cgroup_v2(tmp_path, "10000 100000")) == 1  # never 0
    assert resources.cpu_count(cgroup_v2(tmp_path, "max 100000")) == 16
    assert resources.cpu_count(str(tmp_path / "no-cgroup-here")) == 16
    monkeypatch.setattr(resources, "affinity_cpus", lambda: 2)
    assert resources.cpu_count(cgroup_v2(tmp_path, "800000 100000")) == 2  # mask is smaller


def test_profiler_and_serving_share_the_definition(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "affinity_cpus", lambda: 16)
    monkeypatch.setattr(resources, "CGROUP_ROOT", cgroup_v2(tmp_path, "300000 100000"))
    monkeypatch.setattr(resources.cpu_count, "__defaults__", (resources.CGROUP_ROOT,))
    assert profiler.cpu_cores() == resources.cpu_count() == 3


SMI = [(0, "GPU-aaaa-1111", "NVIDIA A10G", 24 * GB), (1, "GPU-bbbb-2222", "NVIDIA A10G", 24 * GB),
       (2, "GPU-cccc-3333", "NVIDIA T4", 16 * GB)]


@pytest.mark.parametrize("visible,expect", [
    (None, ["GPU-aaaa", "GPU-bbbb", "GPU-cccc"]), ("all", ["GPU-aaaa", "GPU-bbbb", "GPU-cccc"]),
    ("", []), ("2,0", ["GPU-cccc", "GPU-aaaa"]), ("GPU-bbbb-2222", ["GPU-bbbb"]),
    ("GPU-cccc", ["GPU-cccc"]),  # a unique UUID prefix, as CUDA accepts
    ("1,7,0", ["GPU-bbbb"]),  # CUDA stops at the first entry that matches nothing
    ("-1", []),
])
def test_visible_gpus_follow_cuda_visible_devices(visible, expect):
    gpus = resources.select_visible(SMI, visible)
    assert [g.index for g in gpus] == list(range(len(expect)))  # CUDA renumbers from 0
    names = {"GPU-aaaa": ("NVIDIA A10G", 24 * GB), "GPU-bbbb": ("NVIDIA A10G", 24 * GB),
             "GPU-cccc": ("NVIDIA T4", 16 * GB)}
    assert [(g.name, g.memory_bytes) for g in gpus] == [names[e] for e in expect]


def test_mig_uuids_keep_the_listed_gpus():
    assert len(resources.select_visible(SMI, "MIG-0a1b2c3d-4e5f")) == 3


# ------------------------------------------------------------------------------------ plan
def gpus(*mem_gb):
    return [resources.Gpu(i, "gpu", int(m * GB)) for i, m in enumerate(mem_gb)]


def test_cpu_plan_fits_the_cpus_and_gives_a_lone_request_every_thread():
    for cpus in (1, 2, 3, 4, 8, 12, 16, 48, 96):
        p = plan_workers(None, 50_000_000, cpus=cpus, gpus=[], ram_bytes=256 * GB)
        assert p.workers * p.threads <= cpus and p.gpus == 0
        assert p.workers * p.threads >= cpus - p.workers + 1  # no CPU left idle by rounding
        if cpus <= 8:
            assert (p.workers, p.threads) == (1, cpus)  # a lone request gets the whole machine
    assert plan_workers(None, 50_000_000, 2, [], 24 * GB) == WorkerPlan(1, 2, 0, "2 CPUs, no GPU")
    p = plan_workers(None, 50_000_000, 16, [], 64 * GB)
    assert (p.workers, p.threads) == (2, 8)
    assert plan_workers(None, 2 * GB, 32, [], 8 * GB).workers == 1  # RAM-bound
    p = plan_workers(3, 50_000_000, 2, [], 24 * GB)  # requested workers are kept; threads fit
    assert (p.workers, p.threads, p.reason) == (3, 1, "requested")


def test_plan_under_a_fake_cgroup_quota(tmp_path, monkeypatch):
    """A 16-CPU host, a container limited to 3 CPUs: 1 worker x 3 threads, not 2 x 8."""
    monkeypatch.setattr(resources, "affinity_cpus", lambda: 16)
    cpus = resources.cpu_count(cgroup_v2(tmp_path, "300000 100000"))
    p = plan_workers(None, 50_000_000, cpus, [], 64 * GB)
    assert (p.workers, p.threads) == (1, 3)
    assert worker_env(p) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", THREADS_ENV: "3"}


def test_gpu_plan_fits_memory():
    p = plan_workers(None, 100_000_000, cpus=4, gpus=gpus(16), ram_bytes=16 * GB)
    assert (p.workers, p.gpus) == (4, 1)  # ResNet-50 on a 16 GB T4, 4 CPUs: CPU-bound at 4
    p = plan_workers(None, int(2.5 * GB), cpus=4, gpus=gpus(16), ram_bytes=16 * GB)
    assert p.workers == 1  # a 2.5 GB ViT-H: 600 MB + 10 GB + 512 MB per copy, only one fits
    p = plan_workers(None, 100_000_000, cpus=48, gpus=gpus(24, 24, 24, 24), ram_bytes=192 * GB)
    assert (p.workers, p.threads) == (16, 3)


def test_threads_are_set_before_torch_is_imported_in_a_worker(tmp_path):
    """The env a worker starts with: torch, imported after, runs with the plan's threads (a
    1-CPU plan: torch's own default here is every core)."""
    p = plan_workers(None, 50_000_000, 1, [], 64 * GB)
    code = ("import os, sys, json; sys.path.insert(0, %r)\n"
            "from imgclf.serving import plan\n"
            "assert 'torch' not in sys.modules\n"
            "import torch\n"
            "before = torch.get_num_threads()\n"
            "plan.apply_threads(os.environ)\n"
            "print(json.dumps([before, torch.get_num_threads(), torch.get_num_interop_threads()]))"
            % os.path.join(REPO, "code"))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(worker_env(p))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert json.loads(out) == [1, 1, 1]
