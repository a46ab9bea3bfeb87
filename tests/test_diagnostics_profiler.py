"""Profiler: samples, step breakdown, findings, HTML report, torch.profiler trace."""

import json
from types import SimpleNamespace

import pytest

from diagnostics_helpers import make_blobs, mlp, run_loop
from imgclf.diagnostics import profiler as P
from imgclf.diagnostics.report import render_html


def _find(findings, rule):
    """A finding as the summary JSON holds it (analyse() returns Finding objects)."""
    f = next(f for f in findings if (f["rule"] if isinstance(f, dict) else f.rule) == rule)
    return f if isinstance(f, dict) else f.to_dict()


def test_slow_dataset_triggers_data_loader_finding_and_report(tmp_path):
    cb = P.ProfilerCallback(interval=0.05)
    args = SimpleNamespace(num_workers=0, batch_size=32, amp="off")
    # 100 ms per batch to "load", a tiny net to compute: the loader dominates (even when
    # other work on a shared machine slows the compute down)
    run_loop(mlp(), [cb], make_blobs(192, seed=1), make_blobs(64, seed=2), epochs=2,
             batch_size=32, output_dir=tmp_path, data_delay=0.1, args=args)
    summary = json.loads((tmp_path / P.SUMMARY_FILE).read_text())
    assert summary["train_step_count"] == 12 and summary["eval_step_count"] == 4
    assert len(summary["samples"]) >= 5
    assert {"cpu", "mem", "rss_mb"} <= set(summary["samples"][0])
    f = _find(summary["findings"], "DataLoaderWait")
    assert f["status"] == "IssuesFound", f
    assert f["values"]["wait_percent"] > 20
    assert f["values"]["median_data_s"] >= 0.1
    assert "--num-workers" in f["suggestion"]
    assert _find(summary["findings"], "Dataloader")["status"] == "IssuesFound"  # 0 workers
    # CPU-only: the GPU rules say why they did not run
    assert _find(summary["findings"], "LowGPUUtilization")["status"] == "NotEvaluated"
    html = (tmp_path / P.REPORT_FILE).read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "DataLoaderWait" in html and "IssuesFound" in html
    assert "<script" not in html and "http://" not in html   # self-contained


def test_fast_loader_is_not_a_data_loader_bottleneck():
    steps = [{"step": i, "t": i * 0.1, "data": 0.001, "compute": 0.1, "batch": 64} for i in range(50)]
    findings = P.analyse({"samples": [], "train_steps": steps, "num_workers": 4, "cpu_cores": 4})
    assert _find(findings, "DataLoaderWait")["status"] == "NoIssuesFound"
    assert _find(findings, "Dataloader")["status"] == "NoIssuesFound"


def _gpu_samples(gpu, mem, cpu=50.0):
    return [{"t": i, "cpu": cpu, "mem": 30.0, "rss_mb": 1000.0, "gpu": g, "gpu_mem": m}
            for i, (g, m) in enumerate(zip(gpu, mem))]


def test_gpu_findings_on_synthetic_samples():
    n = 60
    # low utilisation; memory climbing 1 point per sample = 10 per 10-sample window (> 5)
    s = {"cuda": True, "samples": _gpu_samples([30.0] * n, [20 + 1.0 * i for i in range(n)]),
         "train_steps": [], "num_workers": 8, "cpu_cores": 8, "batch_size": 16}
    f = P.analyse(s)
    low = _find(f, "LowGPUUtilization")
    assert low["status"] == "IssuesFound" and low["values"]["p95"] == pytest.approx(30)
    assert "--batch-size" in low["suggestion"] and "amp" in low["suggestion"]
    assert _find(f, "GPUMemoryIncrease")["status"] == "IssuesFound"
    assert _find(f, "BatchSize")["status"] == "NoIssuesFound"    # GPU memory p95 above 70%
    s["samples"] = _gpu_samples([30.0] * n, [40.0] * n)
    assert _find(P.analyse(s), "BatchSize")["status"] == "IssuesFound"  # CPU, GPU, memory < 70
    # busy, flat GPU: quiet
    s["samples"] = _gpu_samples([95.0] * n, [60.0] * n)
    f = P.analyse(s)
    for rule in ("LowGPUUtilization", "GPUMemoryIncrease", "BatchSize", "CPUBottleneck"):
        assert _find(f, rule)["status"] == "NoIssuesFound", rule
    # CPU pegged while the GPU idles
    s["samples"] = _gpu_samples([5.0] * n, [60.0] * n, cpu=97.0)
    assert _find(P.analyse(s), "CPUBottleneck")["status"] == "IssuesFound"
    html = render_html({**s, "findings": [f.to_dict() for f in P.analyse(s)]})
    assert "CPUBottleneck" in html and html.count("data:image/png;base64,") == 2


def test_torch_profiler_window_writes_a_chrome_trace(tmp_path):
    cb = P.ProfilerCallback(interval=0.2, trace_steps=3, trace_start=2)
    run_loop(mlp(), [cb], make_blobs(256, seed=1), make_blobs(32, seed=2), epochs=1,
             batch_size=32, output_dir=tmp_path)
    trace = tmp_path / P.TRACE_DIR / "trace.pt.trace.json"
    assert trace.is_file()
    events = json.loads(trace.read_text())["traceEvents"]
    assert any("addmm" in e.get("name", "") or "linear" in e.get("name", "") for e in events)
    summary = json.loads((tmp_path / P.SUMMARY_FILE).read_text())
    assert summary["top_ops"] and summary["torch_trace"] == str(trace)
    assert "Top operators" in (tmp_path / P.REPORT_FILE).read_text()


def test_memory_and_summary_stay_bounded_for_any_job_length(tmp_path):
    cb = P.ProfilerCallback(interval=60)
    ctx = SimpleNamespace(is_main=True, output_dir=str(tmp_path), device=__import__("torch").device("cpu"),
                          args=SimpleNamespace(num_workers=2, batch_size=8, amp="off"), global_step=0)
    cb.on_train_begin(ctx)
    steps = 20 * P.SAMPLE_CAP + 7
    for i in range(steps):
        cb.on_step_end(ctx, "train", i, 1.0, 8, 0.001, 0.003)
        cb.sampler.record({"t": i, "cpu": 50.0 + (i % 10), "mem": 30.0, "rss_mb": 100.0})
        if i % 5000 == 4999:
            cb.on_epoch_end(ctx, i // 5000 + 1, {})
    cb.on_train_end(ctx, {})
    summary = json.loads((tmp_path / P.SUMMARY_FILE).read_text())
    assert summary["train_step_count"] == steps
    assert P.SAMPLE_CAP // 2 <= len(summary["train_steps"]) <= P.SAMPLE_CAP
    assert P.SAMPLE_CAP // 2 <= len(summary["samples"]) <= P.SAMPLE_CAP
    kept = [s["step"] for s in summary["train_steps"]]
    stride = summary["train_step_stride"]
    assert kept == list(range(0, steps, stride))              # evenly spaced over the whole job
    totals = summary["train_step_totals"]                     # exact, over every step but the first
    assert totals["data_s"] == pytest.approx(0.001 * (steps - 1))
    assert totals["compute_s"] == pytest.approx(0.003 * (steps - 1))
    epoch1 = summary["epochs"][0]
    assert epoch1["train_steps"]["count"] == 5000 and epoch1["system"]["cpu_max"] == 59.0
    assert epoch1["system"]["cpu_mean"] == pytest.approx(54.5)
    wait = _find(summary["findings"], "DataLoaderWait")
    assert wait["values"]["wait_percent"] == pytest.approx(25.0)
    assert (tmp_path / P.SUMMARY_FILE).stat().st_size < 1_000_000
