"""Profiler: samples, step breakdown, findings, HTML report, torch.profiler trace."""

import json
from types import SimpleNamespace

import pytest

from diagnostics_helpers import make_blobs, mlp, run_loop
from imgclf.diagnostics import profiler as P
from imgclf.diagnostics.report import render_html


def _find(findings, rule):
    return next(f for f in findings if f["rule"] == rule)


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
    html = render_html({**s, "findings": P.analyse(s)})
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
