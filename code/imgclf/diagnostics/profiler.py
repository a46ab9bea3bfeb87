"""Profiler: system metrics, step-time breakdown, a torch.profiler window, ProfilerReport-style findings.

What is recorded (rank 0 only):

- a background thread samples every ``interval`` seconds: CPU utilisation (whole host, %),
  host memory (%), this process's RSS, and on CUDA: GPU utilisation and memory (%) through
  pynvml or ``nvidia-smi`` when present, plus ``torch.cuda`` allocated/reserved memory;
- per train step (from the loop's ``on_step_end``): data-loader wait and compute time;
- optionally (``--profiler-trace-steps N``) a torch.profiler trace of N train steps
  (``torch_profiler/trace.pt.trace.json``: open in https://ui.perfetto.dev, chrome://tracing
  or TensorBoard's profiler plugin) and its top operators.

At the end :func:`analyse` turns the samples into findings named after SageMaker Debugger's
ProfilerReport rules, with AWS's default thresholds (smdebug_rulesconfig.profiler_rules):

=================  ==============================================================================
LowGPUUtilization  threshold_p95=70, threshold_p5=10, window=500, patience=1000
GPUMemoryIncrease  increase=5 (percentage points between moving averages), window=10, patience=1000
Dataloader         min_threshold=70, max_threshold=200 (data-loader workers as % of CPU cores)
DataLoaderWait     threshold=20 (% of step time spent waiting for the next batch; this project's)
BatchSize          cpu_threshold_p95=70, gpu_threshold_p95=70, gpu_memory_threshold_p95=70
CPUBottleneck      threshold=50 (% of samples), gpu_threshold=10, cpu_threshold=90
=================  ==============================================================================

AWS counts ``patience`` in datapoints of a 500 ms sampler on hour-long jobs; here the warm-up
skipped is ``min(patience, 20% of the samples)`` so short jobs are still evaluated.
``profiler_summary.json`` and ``profiler_report.html`` (see :mod:`.report`) go to the output dir,
also when training fails (``on_exception``). Memory and summary stay bounded for a job of any
length: at most :data:`SAMPLE_CAP` evenly spaced samples and train steps (:class:`Decimated`),
plus exact step totals and per-epoch aggregates (:class:`WindowStats`). Findings are
:class:`~.findings.Finding` objects, the model the training rules use.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from typing import Optional

from imgclf import resources
from imgclf.atomic import atomic_write_json
from imgclf.callbacks import Callback, TrainContext

from .findings import ISSUES_FOUND, NO_ISSUES_FOUND, NOT_EVALUATED, Finding
from .rules import json_safe

log = logging.getLogger(__name__)

SUMMARY_FILE = "profiler_summary.json"
REPORT_FILE = "profiler_report.html"
TRACE_DIR = "torch_profiler"

DEFAULTS = {
    "LowGPUUtilization": {"threshold_p95": 70, "threshold_p5": 10, "window": 500, "patience": 1000},
    "GPUMemoryIncrease": {"increase": 5, "window": 10, "patience": 1000},
    "Dataloader": {"min_threshold": 70, "max_threshold": 200},
    "DataLoaderWait": {"threshold": 20},
    "BatchSize": {"cpu_threshold_p95": 70, "gpu_threshold_p95": 70,
                  "gpu_memory_threshold_p95": 70, "patience": 1000, "window": 500},
    "CPUBottleneck": {"threshold": 50, "gpu_threshold": 10, "cpu_threshold": 90, "patience": 1000},
}


def cpu_cores() -> int:
    return resources.cpu_count()  # the one definition, cgroup quota aware


#: At most this many system samples and train steps are kept (memory and profiler_summary.json
#: stay bounded for a job of any length); exact totals and per-epoch aggregates are kept beside.
SAMPLE_CAP = 2000


class Decimated:
    """A stream thinned to at most ``cap`` evenly spaced items: when full, every other kept item
    is dropped and the keep stride doubles. The kept items cover the whole job uniformly, so
    percentiles, medians and plots stay representative however long it runs."""

    def __init__(self, cap: int = SAMPLE_CAP):
        self.cap, self.stride, self.seen = max(2, int(cap)), 1, 0
        self.items: list = []

    def add(self, item) -> None:
        if self.seen % self.stride == 0:
            self.items.append(item)
            if len(self.items) > self.cap:
                self.items = self.items[::2]
                self.stride *= 2
        self.seen += 1

    def __len__(self) -> int:
        return len(self.items)


class WindowStats:
    """Exact aggregates of numeric fields over a window (an epoch): count, mean, max."""

    def __init__(self):
        self.n: dict = {}
        self.sum: dict = {}
        self.max: dict = {}

    def add(self, record: dict) -> None:
        for k, v in record.items():
            if k in ("t", "step") or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            self.n[k] = self.n.get(k, 0) + 1
            self.sum[k] = self.sum.get(k, 0.0) + v
            self.max[k] = max(self.max.get(k, v), v)

    def close(self) -> dict:
        out = {f"{k}_mean": self.sum[k] / self.n[k] for k in self.n}
        out.update({f"{k}_max": v for k, v in self.max.items()})
        out["count"] = max(self.n.values(), default=0)
        self.__init__()
        return out


# ---------------------------------------------------------------------------------------------
# GPU probes: pynvml, else nvidia-smi, else torch.cuda memory only
# ---------------------------------------------------------------------------------------------

class _GpuProbe:
    def __init__(self, index: int):
        self.index, self.kind, self._h = index, None, None
        try:
            import pynvml   # optional: nvidia-ml-py
            pynvml.nvmlInit()
            self._nvml, self._h, self.kind = pynvml, pynvml.nvmlDeviceGetHandleByIndex(index), "pynvml"
            return
        except ImportError:
            pass
        except Exception as e:   # NVML present but unusable (driver mismatch, container limits)
            log.info("profiler: pynvml unusable (%s); trying nvidia-smi", e)
        if shutil.which("nvidia-smi"):
            self.kind = "nvidia-smi"
        else:
            log.info("profiler: neither pynvml nor nvidia-smi; GPU utilisation not sampled "
                     "(torch.cuda memory only)")

    def read(self) -> tuple[Optional[float], Optional[float]]:
        """(utilisation %, memory used %)."""
        if self.kind == "pynvml":
            u = self._nvml.nvmlDeviceGetUtilizationRates(self._h)
            m = self._nvml.nvmlDeviceGetMemoryInfo(self._h)
            return float(u.gpu), 100.0 * m.used / m.total
        if self.kind == "nvidia-smi":
            out = subprocess.run(
                ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu,memory.used,"
                 "memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10).stdout.strip().split(",")
            if len(out) == 3:
                u, used, total = (float(x) for x in out)
                return u, 100.0 * used / total
            log.debug("nvidia-smi: unexpected output %r", out)
        return None, None


class SystemSampler(threading.Thread):
    """Samples host and GPU metrics every ``interval`` s until :meth:`stop`."""

    def __init__(self, interval: float = 1.0, device=None):
        super().__init__(name="imgclf-profiler", daemon=True)
        import psutil
        self.interval = max(0.05, float(interval))
        self._psutil, self._proc = psutil, psutil.Process()
        self._halt = threading.Event()
        self.t0 = time.time()
        self.samples = Decimated()
        self.window = WindowStats()
        self._lock = threading.Lock()
        self.errors = 0
        self.cuda_index = None
        if device is not None and getattr(device, "type", None) == "cuda":
            import torch
            self.cuda_index = device.index if device.index is not None else torch.cuda.current_device()
            self._gpu = _GpuProbe(self.cuda_index)
            self.gpu_total_mb = torch.cuda.get_device_properties(self.cuda_index).total_memory / 2**20
        self._cores = cpu_cores()
        psutil.cpu_percent(None)   # first calls prime the counters
        self._proc.cpu_percent(None)

    def sample(self) -> dict:
        ps = self._psutil
        s = {"t": round(time.time() - self.t0, 3), "cpu": ps.cpu_percent(None),
             # this process (data-loader workers excluded), as % of all cores like "cpu"
             "proc_cpu": self._proc.cpu_percent(None) / self._cores,
             "mem": ps.virtual_memory().percent, "rss_mb": self._proc.memory_info().rss / 2**20}
        if self.cuda_index is not None:
            import torch
            s["gpu_alloc_mb"] = torch.cuda.memory_allocated(self.cuda_index) / 2**20
            s["gpu_reserved_mb"] = torch.cuda.memory_reserved(self.cuda_index) / 2**20
            util, mem = self._gpu.read()
            s["gpu"] = util
            s["gpu_mem"] = mem if mem is not None else 100.0 * s["gpu_reserved_mb"] / self.gpu_total_mb
        return s

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.record(self.sample())
            except Exception as e:   # a failed probe must not end training; count and report it
                self.errors += 1
                if self.errors <= 3:
                    log.warning("profiler: sampling failed (%s: %s)", type(e).__name__, e)

    def record(self, sample: dict) -> None:
        with self._lock:
            self.samples.add(sample)
            self.window.add(sample)

    def close_window(self) -> dict:
        """Aggregates of the samples since the last call (per-epoch figures)."""
        with self._lock:
            return self.window.close()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)


# ---------------------------------------------------------------------------------------------
# Findings
# ---------------------------------------------------------------------------------------------

def _pct(values: list, q: float) -> float:
    import numpy as np
    return float(np.percentile(values, q))


def _finding(rule, status, evidence="", suggestion="", **values) -> Finding:
    return Finding(rule, issues={ISSUES_FOUND: True, NO_ISSUES_FOUND: False}.get(status),
                   values=values, message=evidence, suggestion=suggestion,
                   parameters=DEFAULTS.get(rule, {}))


def _after_warmup(series: list, patience: int) -> list:
    return series[min(patience, len(series) // 5):]


def analyse(summary: dict) -> list[Finding]:
    """Findings from a profiler summary (pure: tests feed synthetic samples)."""
    samples = summary.get("samples", [])
    steps = summary.get("train_steps", [])
    cores = summary.get("cpu_cores") or cpu_cores()
    workers = summary.get("num_workers")
    batch = summary.get("batch_size")
    findings = []
    gpu = [s["gpu"] for s in samples if s.get("gpu") is not None]
    gmem = [s["gpu_mem"] for s in samples if s.get("gpu_mem") is not None]
    cpu = [s["cpu"] for s in samples if s.get("cpu") is not None]
    no_gpu = "no CUDA device in this run" if not summary.get("cuda") else "GPU utilisation not sampled (no pynvml/nvidia-smi)"

    # LowGPUUtilization
    p = DEFAULTS["LowGPUUtilization"]
    g = _after_warmup(gpu, p["patience"])
    if len(g) < 5:
        findings.append(_finding("LowGPUUtilization", NOT_EVALUATED, no_gpu if not gpu else
                                 f"only {len(g)} GPU samples after warm-up"))
    else:
        worst = None
        for i in range(0, len(g), p["window"]):
            w = g[max(0, min(i, len(g) - p["window"])):i + p["window"]]
            p95, p5 = _pct(w, 95), _pct(w, 5)
            if p95 < p["threshold_p95"] or p5 < p["threshold_p5"]:
                worst = worst or (p95, p5)
        p95, p5 = worst or (_pct(g, 95), _pct(g, 5))
        if worst and p95 < p["threshold_p95"]:
            findings.append(_finding(
                "LowGPUUtilization", ISSUES_FOUND,
                f"GPU utilisation p95 {p95:.0f}% < {p['threshold_p95']}% over {len(g)} samples",
                "The GPU waits most of the time. Feed it faster and give it more work per step: "
                f"raise --num-workers (now {workers}, {cores} cores), keep --amp on (bf16/fp16), "
                f"increase --batch-size (now {batch}) and scale --lr with it, decode JPEGs on the "
                "GPU (torchvision.io.decode_jpeg(device='cuda')) or pre-resize images offline.",
                p95=p95, p5=p5))
        elif worst:
            findings.append(_finding(
                "LowGPUUtilization", ISSUES_FOUND,
                f"GPU utilisation fluctuates: p95 {p95:.0f}% but p5 {p5:.0f}% < {p['threshold_p5']}%",
                "Utilisation drops to ~0 between bursts: typically the data loader or a per-step "
                "sync (.item(), logging, checkpointing). More --num-workers, persistent workers "
                "and pinned memory smooth it; check the step-time plot for periodic stalls.",
                p95=p95, p5=p5))
        else:
            findings.append(_finding("LowGPUUtilization", NO_ISSUES_FOUND,
                                     f"GPU utilisation p95 {p95:.0f}%, p5 {p5:.0f}%", p95=p95, p5=p5))

    # GPUMemoryIncrease
    p = DEFAULTS["GPUMemoryIncrease"]
    m = _after_warmup(gmem, p["patience"])
    if len(m) < 2 * p["window"]:
        findings.append(_finding("GPUMemoryIncrease", NOT_EVALUATED,
                                 no_gpu if not gmem else f"only {len(m)} GPU memory samples after warm-up"))
    else:
        means = [sum(m[i:i + p["window"]]) / p["window"] for i in range(0, len(m) - p["window"] + 1, p["window"])]
        jumps = [(b - a, i) for i, (a, b) in enumerate(zip(means, means[1:]))]
        jump, at = max(jumps)
        total = means[-1] - means[0]
        if jump > p["increase"]:
            findings.append(_finding(
                "GPUMemoryIncrease", ISSUES_FOUND,
                f"GPU memory moving average rose by {jump:.1f} points between consecutive windows "
                f"(total {means[0]:.1f}% -> {means[-1]:.1f}%)",
                "Memory that keeps growing is usually tensors kept alive across steps: store "
                "loss.item() / .detach() instead of the loss tensor, don't append outputs to lists, "
                "and check for growing batch or image sizes. If the peak is fine, ignore it.",
                max_increase=jump, total_increase=total))
        else:
            findings.append(_finding("GPUMemoryIncrease", NO_ISSUES_FOUND,
                                     f"largest rise between windows {jump:.1f} points, total {total:+.1f}",
                                     max_increase=jump, total_increase=total))

    # Dataloader (AWS: number of workers relative to the cores)
    p = DEFAULTS["Dataloader"]
    if workers is None:
        findings.append(_finding("Dataloader", NOT_EVALUATED, "number of data-loader workers unknown"))
    else:
        share = 100.0 * workers / cores
        if share < p["min_threshold"]:
            findings.append(_finding(
                "Dataloader", ISSUES_FOUND,
                f"{workers} data-loader workers for {cores} CPU cores ({share:.0f}% < {p['min_threshold']}%)",
                f"Use about one worker per core: --num-workers {max(1, cores - 1)}-{cores}.",
                workers=workers, cores=cores))
        elif share > p["max_threshold"]:
            findings.append(_finding(
                "Dataloader", ISSUES_FOUND,
                f"{workers} data-loader workers for {cores} CPU cores ({share:.0f}% > {p['max_threshold']}%)",
                f"Too many workers compete for {cores} cores: --num-workers {cores}.",
                workers=workers, cores=cores))
        else:
            findings.append(_finding("Dataloader", NO_ISSUES_FOUND,
                                     f"{workers} workers for {cores} cores", workers=workers, cores=cores))

    # DataLoaderWait: share of step time spent waiting for data
    p = DEFAULTS["DataLoaderWait"]
    st = steps[1:] if len(steps) > 1 else steps   # the first batch includes worker start-up
    totals = summary.get("train_step_totals")     # exact, over every step (steps is a sample)
    if not st:
        findings.append(_finding("DataLoaderWait", NOT_EVALUATED, "no train steps recorded"))
    else:
        data = totals["data_s"] if totals else sum(s["data"] for s in st)
        comp = totals["compute_s"] if totals else sum(s["compute"] for s in st)
        share = 100.0 * data / max(1e-12, data + comp)
        med = _pct([s["data"] for s in st], 50)
        medc = _pct([s["compute"] for s in st], 50)
        vals = dict(wait_percent=share, median_data_s=med, median_compute_s=medc)
        if share > p["threshold"]:
            findings.append(_finding(
                "DataLoaderWait", ISSUES_FOUND,
                f"{share:.0f}% of train step time is spent waiting for the next batch "
                f"(median wait {med * 1000:.1f} ms vs compute {medc * 1000:.1f} ms)",
                f"The input pipeline is the bottleneck: raise --num-workers (now {workers}, "
                f"{cores} cores), store images pre-resized near --image-size, decode JPEGs on the "
                "GPU (torchvision.io.decode_jpeg(device='cuda')), or use a CPU-richer instance.",
                **vals))
        else:
            findings.append(_finding("DataLoaderWait", NO_ISSUES_FOUND,
                                     f"{share:.0f}% of step time waiting for data", **vals))

    # BatchSize and CPUBottleneck need GPU utilisation
    p = DEFAULTS["BatchSize"]
    g = _after_warmup(gpu, p["patience"])
    if len(g) < 5:
        findings.append(_finding("BatchSize", NOT_EVALUATED, no_gpu))
    else:
        c = _after_warmup(cpu, p["patience"])
        mm = _after_warmup(gmem, p["patience"])
        cp, gp, mp = _pct(c, 95), _pct(g, 95), _pct(mm, 95) if mm else 0.0
        vals = dict(cpu_p95=cp, gpu_p95=gp, gpu_memory_p95=mp)
        if cp < p["cpu_threshold_p95"] and gp < p["gpu_threshold_p95"] and mp < p["gpu_memory_threshold_p95"]:
            findings.append(_finding(
                "BatchSize", ISSUES_FOUND,
                f"CPU p95 {cp:.0f}%, GPU p95 {gp:.0f}%, GPU memory p95 {mp:.0f}%: all below 70%",
                f"The instance is under-used: increase --batch-size (now {batch}; scale --lr "
                "linearly), or pick a smaller/cheaper instance type.", **vals))
        else:
            findings.append(_finding("BatchSize", NO_ISSUES_FOUND,
                                     f"CPU p95 {cp:.0f}%, GPU p95 {gp:.0f}%, GPU memory p95 {mp:.0f}%", **vals))

    p = DEFAULTS["CPUBottleneck"]
    pairs = [(s["cpu"], s["gpu"]) for s in _after_warmup(samples, p["patience"])
             if s.get("gpu") is not None and s.get("cpu") is not None]
    if len(pairs) < 5:
        findings.append(_finding("CPUBottleneck", NOT_EVALUATED, no_gpu))
    else:
        n = sum(1 for c_, g_ in pairs if c_ > p["cpu_threshold"] and g_ < p["gpu_threshold"])
        share = 100.0 * n / len(pairs)
        if share > p["threshold"]:
            findings.append(_finding(
                "CPUBottleneck", ISSUES_FOUND,
                f"in {share:.0f}% of samples the CPU was > {p['cpu_threshold']}% busy while the "
                f"GPU was < {p['gpu_threshold']}%",
                "CPU-side preprocessing starves the GPU: move decoding/augmentation to the GPU "
                "(torchvision.io.decode_jpeg(device='cuda'), torchvision.transforms.v2 on tensors), "
                "pre-resize images, or choose an instance with more vCPUs per GPU.",
                bottleneck_percent=share))
        else:
            findings.append(_finding("CPUBottleneck", NO_ISSUES_FOUND,
                                     f"CPU-bound GPU idling in {share:.0f}% of samples",
                                     bottleneck_percent=share))
    return findings


# ---------------------------------------------------------------------------------------------
# The callback
# ---------------------------------------------------------------------------------------------

class ProfilerCallback(Callback):
    def __init__(self, interval: float = 1.0, trace_steps: int = 0, trace_start: int = 5):
        self.interval, self.trace_steps, self.trace_start = interval, int(trace_steps), int(trace_start)
        self.sampler: Optional[SystemSampler] = None
        self.prof = None
        self.trace_path: Optional[str] = None
        self.top_ops: list = []
        self.train_steps = Decimated()        # a capped, evenly spaced sample of the steps
        self.step_totals = {"steps": 0, "data_s": 0.0, "compute_s": 0.0, "images": 0}
        self.step_window = WindowStats()      # exact per-epoch step aggregates
        self.eval_steps = 0
        self.epochs: list[dict] = []          # one small record per epoch (the windows)
        self.active = False
        self.failure: Optional[str] = None

    def on_train_begin(self, ctx: TrainContext) -> None:
        self.active = ctx.is_main
        if not self.active:
            return
        self.output_dir = ctx.output_dir
        self.device = ctx.device
        self.args = ctx.args
        self.sampler = SystemSampler(self.interval, ctx.device)
        self.sampler.start()
        self.t0 = self.sampler.t0
        if self.trace_steps > 0:
            self._start_trace(ctx)
        log.info("profiler: sampling system metrics every %.2fs%s", self.interval,
                 f"; torch.profiler trace of train steps {self.trace_start}-"
                 f"{self.trace_start + self.trace_steps - 1}" if self.prof else "")

    def _start_trace(self, ctx: TrainContext) -> None:
        from torch.profiler import ProfilerActivity, profile, schedule

        acts = [ProfilerActivity.CPU]
        if ctx.device.type == "cuda":
            acts.append(ProfilerActivity.CUDA)
        wait = max(0, self.trace_start - ctx.global_step - 1)
        trace_dir = os.path.join(ctx.output_dir, TRACE_DIR)

        def ready(prof):
            os.makedirs(trace_dir, exist_ok=True)
            self.trace_path = os.path.join(trace_dir, "trace.pt.trace.json")
            prof.export_chrome_trace(self.trace_path)
            key = "self_device_time_total" if ctx.device.type == "cuda" else "self_cpu_time_total"
            top = sorted(prof.key_averages(), key=lambda e: -getattr(e, key, 0.0))[:15]
            self.top_ops = [{"name": e.key, "calls": e.count,
                             "self_cpu_ms": e.self_cpu_time_total / 1000.0,
                             "self_device_ms": getattr(e, "self_device_time_total", 0.0) / 1000.0}
                            for e in top]
            log.info("profiler: torch.profiler trace written to %s", self.trace_path)

        self.prof = profile(activities=acts, schedule=schedule(wait=wait, warmup=1,
                                                               active=self.trace_steps, repeat=1),
                            on_trace_ready=ready, record_shapes=False, with_stack=False,
                            acc_events=True)   # one cycle; also silences a per-cycle warning
        self.prof.start()

    def on_step_end(self, ctx: TrainContext, mode: str, step: int, loss: float,
                    batch_size: int, data_time: float, step_time: float) -> None:
        if not self.active:
            return
        if mode == "train":
            rec = {"step": step, "t": round(time.time() - self.t0, 4), "data": float(data_time),
                   "compute": float(step_time), "batch": int(batch_size)}
            self.train_steps.add(rec)
            self.step_window.add(rec)
            if self.step_totals["steps"] > 0:   # the first batch includes worker start-up
                self.step_totals["data_s"] += rec["data"]
                self.step_totals["compute_s"] += rec["compute"]
            self.step_totals["steps"] += 1
            self.step_totals["images"] += rec["batch"]
            if self.prof is not None:
                self.prof.step()
        else:
            self.eval_steps += 1

    def on_epoch_end(self, ctx: TrainContext, epoch: int, metrics: dict) -> None:
        if self.active:
            self.epochs.append({"epoch": epoch, "t": round(time.time() - self.t0, 3),
                                "system": self.sampler.close_window(),
                                "train_steps": self.step_window.close()})

    def summary(self) -> dict:
        s = self.sampler
        import torch
        cuda = self.device.type == "cuda"
        return {
            "duration_s": round(time.time() - self.t0, 3),
            "interval_s": self.interval,
            "device": str(self.device),
            "cuda": cuda,
            "gpu_name": torch.cuda.get_device_name(self.device) if cuda else None,
            "gpu_probe": getattr(getattr(s, "_gpu", None), "kind", None),
            "gpu_peak_allocated_mb": torch.cuda.max_memory_allocated(self.device) / 2**20 if cuda else None,
            "cpu_cores": cpu_cores(),
            "num_workers": getattr(self.args, "num_workers", None),
            "batch_size": getattr(self.args, "batch_size", None),
            "amp": getattr(self.args, "amp", None),
            "train_step_count": self.step_totals["steps"],
            "eval_step_count": self.eval_steps,
            "sampling_errors": s.errors if s else 0,
            "sample_cap": SAMPLE_CAP,
            "sample_stride": s.samples.stride if s else 1,
            "samples": s.samples.items if s else [],
            "train_step_stride": self.train_steps.stride,
            "train_steps": self.train_steps.items,
            "train_step_totals": dict(self.step_totals),
            "epochs": self.epochs,
            "training_failed": self.failure,
            "torch_trace": self.trace_path,
            "top_ops": self.top_ops,
        }

    def on_train_end(self, ctx: TrainContext, metrics: dict) -> None:
        self._finish()

    def on_exception(self, ctx: TrainContext, exc: BaseException) -> None:
        self.failure = f"{type(exc).__name__}: {exc}"
        self._finish()

    def _finish(self) -> None:
        """Close the torch profiler and the sampler, write the summary and the HTML report."""
        if not self.active:
            return
        self.active = False
        if self.prof is not None:
            prof, self.prof = self.prof, None
            prof.stop()
            if self.trace_path is None:
                log.warning("profiler: training ended before the torch.profiler window "
                            "(steps %d-%d) completed; no trace", self.trace_start,
                            self.trace_start + self.trace_steps - 1)
        self.sampler.stop()
        summary = self.summary()
        findings = analyse(summary)
        summary["findings"] = [f.to_dict() for f in findings]
        for f in findings:
            if f.issues:
                log.warning('profiler_rule=%s status=%s evidence="%s"', f.rule, f.status,
                            f.message)
            else:
                log.info("profiler_rule=%s status=%s", f.rule, f.status)
        path = atomic_write_json(os.path.join(self.output_dir, SUMMARY_FILE), json_safe(summary),
                                 indent=1)
        from .report import write_html_report
        html = write_html_report(summary, self.output_dir)
        log.info("profiler: report written to %s (summary %s)%s", html, path,
                 " after the failure" if self.failure else "")
