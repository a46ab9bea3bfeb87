"""The self-contained HTML profiler report: findings, plots (base64 PNG), rules, top operators.

One file, no external assets or scripts: open ``profiler_report.html`` in any browser, locally or
after extracting a SageMaker job's ``output.tar.gz``.

    python -m imgclf.diagnostics.report OUTPUT_DATA_DIR     # re-render from profiler_summary.json
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import sys
from typing import Optional

from imgclf.atomic import atomic_write_text

from .findings import ISSUES_FOUND, NO_ISSUES_FOUND
from .profiler import REPORT_FILE, SUMMARY_FILE
from .rules import REPORT_FILE as RULES_FILE

_COLORS = {ISSUES_FOUND: "#c0392b", NO_ISSUES_FOUND: "#1e8449"}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;width:100%;margin:.5em 0}td,th{border:1px solid #ddd;padding:.35em .5em;
vertical-align:top;text-align:left;font-size:.92em}th{background:#f4f4f4}
.status{font-weight:600;white-space:nowrap}.muted{color:#777}img{max-width:100%}
code{background:#f4f4f4;padding:0 .2em}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(summary: dict) -> list[tuple[str, str]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    samples = summary.get("samples") or []
    epochs = summary.get("epochs") or []

    def epoch_lines(ax):
        for e in epochs:
            ax.axvline(e["t"], color="#bbb", lw=0.8, ls="--")

    if samples:
        t = [s["t"] for s in samples]
        fig, ax = plt.subplots(figsize=(10, 3))
        ax.plot(t, [s["cpu"] for s in samples], label="CPU, whole host %")
        if any(s.get("proc_cpu") is not None for s in samples):
            ax.plot(t, [s.get("proc_cpu") for s in samples], label="CPU, training process %", lw=1)
        if any(s.get("gpu") is not None for s in samples):
            ax.plot(t, [s.get("gpu") for s in samples], label="GPU %")
        epoch_lines(ax)
        ax.set_ylim(0, 105)
        ax.set_xlabel("seconds since start of training")
        ax.set_ylabel("utilisation %")
        ax.legend(loc="upper right")
        out.append(("Utilisation over time (dashed: epoch ends)", _png(fig)))

        fig, ax = plt.subplots(figsize=(10, 3))
        ax.plot(t, [s["mem"] for s in samples], label="host memory %")
        if any(s.get("gpu_mem") is not None for s in samples):
            ax.plot(t, [s.get("gpu_mem") for s in samples], label="GPU memory %")
        epoch_lines(ax)
        ax.set_ylim(0, 105)
        ax.set_xlabel("seconds since start of training")
        ax.set_ylabel("memory %")
        ax2 = ax.twinx()
        ax2.plot(t, [s["rss_mb"] for s in samples], color="#888", ls=":", label="process RSS MB")
        if any(s.get("gpu_alloc_mb") is not None for s in samples):
            ax2.plot(t, [s.get("gpu_alloc_mb") for s in samples], color="#9b59b6", ls=":",
                     label="torch.cuda allocated MB")
        ax2.set_ylabel("MB")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
        out.append(("Memory over time", _png(fig)))

    steps = summary.get("train_steps") or []
    if steps:
        x = [s["step"] for s in steps]
        data = [s["data"] * 1000 for s in steps]
        comp = [s["compute"] * 1000 for s in steps]
        fig, ax = plt.subplots(figsize=(10, 3))
        ax.stackplot(x, data, comp, labels=["data-loader wait", "compute (fwd+bwd+step)"],
                     colors=["#e67e22", "#3498db"], alpha=0.85)
        ax.set_xlabel("train step")
        ax.set_ylabel("ms")
        ax.legend(loc="upper right")
        out.append(("Step time breakdown (train)", _png(fig)))
    return out


def _table(rows: list[list[str]], header: list[str]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _status(s: str) -> str:
    return f'<span class="status" style="color:{_COLORS.get(s, "#777")}">{html.escape(s)}</span>'


def render_html(summary: dict, rules_report: Optional[dict] = None) -> str:
    e = html.escape
    findings = summary.get("findings") or []
    n_issues = sum(1 for f in findings if f["status"] == ISSUES_FOUND)
    steps = summary.get("train_steps") or []
    totals = summary.get("train_step_totals") or {}
    data = totals.get("data_s", sum(s["data"] for s in steps))
    comp = totals.get("compute_s", sum(s["compute"] for s in steps))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Profiler report</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>Training profiler report</h1>",
             *([f"<p><b>Training failed</b>: {e(str(summary['training_failed']))}. The figures "
                "cover the steps before the failure.</p>"] if summary.get("training_failed") else []),
             f"<p>{n_issues} of {len(findings)} profiler rules found issues. Device "
             f"<code>{e(str(summary.get('device')))}</code>"
             + (f" ({e(str(summary.get('gpu_name')))})" if summary.get("gpu_name") else "")
             + f", {summary.get('cpu_cores')} CPU cores, {summary.get('num_workers')} data-loader "
             f"workers, batch size {summary.get('batch_size')}, AMP {e(str(summary.get('amp')))}. "
             f"{summary.get('train_step_count', 0)} train and {summary.get('eval_step_count', 0)} "
             f"evaluation steps in {summary.get('duration_s', 0):.1f}s; "
             f"{len(summary.get('samples') or [])} system samples kept (one every "
             f"{summary.get('interval_s', 0) * summary.get('sample_stride', 1):g}s)"
             + (f"; train steps spent {data:.1f}s waiting for data and {comp:.1f}s computing"
                if steps else "") + ".</p>"]

    parts.append("<h2>Findings</h2>")
    rows = [[e(f["rule"]), _status(f["status"]), e(f.get("message", "")), e(f.get("suggestion", ""))]
            for f in sorted(findings, key=lambda f: f["status"] != ISSUES_FOUND)]
    parts.append(_table(rows, ["rule", "status", "evidence", "suggestion"]))
    parts.append("<p class='muted'>Rules and default thresholds follow SageMaker Debugger's "
                 "ProfilerReport (LowGPUUtilization, GPUMemoryIncrease, Dataloader, BatchSize, "
                 "CPUBottleneck); DataLoaderWait is this project's. NotEvaluated: the signal is "
                 "missing (e.g. no GPU).</p>")

    for title, uri in _plots(summary):
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='{uri}'>")

    if rules_report:
        parts.append("<h2>Training rules (rules_report.json)</h2>")
        rows = []
        for name, r in rules_report.get("rules", {}).items():
            fi = r.get("first_issue") or {}
            rows.append([e(name), _status(r["status"]), str(r.get("evaluations", 0)),
                         e(f"step {fi.get('step')}: {fi.get('message', '')}" if fi else "")])
        parts.append(_table(rows, ["rule", "status", "evaluations", "first issue"]))

    top = summary.get("top_ops") or []
    if top:
        parts.append(f"<h2>Top operators (torch.profiler window)</h2><p>Trace: "
                     f"<code>{e(str(summary.get('torch_trace')))}</code> - open it in "
                     "https://ui.perfetto.dev or chrome://tracing.</p>")
        rows = [[e(o["name"]), str(o["calls"]), f"{o['self_cpu_ms']:.2f}", f"{o['self_device_ms']:.2f}"]
                for o in top]
        parts.append(_table(rows, ["operator", "calls", "self CPU ms", "self device ms"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html_report(summary: dict, output_dir: str) -> str:
    rules_report = None
    rules_path = os.path.join(output_dir, RULES_FILE)
    if os.path.isfile(rules_path):
        with open(rules_path) as f:
            rules_report = json.load(f)
    return atomic_write_text(os.path.join(output_dir, REPORT_FILE), render_html(summary, rules_report))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    with open(os.path.join(argv[0], SUMMARY_FILE)) as f:
        summary = json.load(f)
    print(write_html_report(summary, argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
