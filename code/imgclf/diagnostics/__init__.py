"""Training diagnostics: Debugger-style rules, profiler report, smdebug hook (issue 6).

The training loop calls exactly two functions of this package:

- ``add_arguments(parser)``   adds the diagnostics flags (an argument group);
- ``build_callbacks(args)``   returns the :class:`imgclf.callbacks.Callback` objects to run.

Modules: :mod:`.rules` (the five rules, in-loop driver, ``rules_report.json``),
:mod:`.smdebug_rules` (the same rules as smdebug ``Rule`` subclasses, offline),
:mod:`.debugger` (smdebug hook from SageMaker's debug hook config, or ``--smdebug-out-dir``),
:mod:`.profiler` + :mod:`.report` (system metrics, step-time breakdown, torch.profiler trace,
``profiler_report.html`` and ``profiler_summary.json``).
"""

from __future__ import annotations

import argparse
import logging
import os

from imgclf.options import option as _flag
from imgclf.options import str2bool

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "diagnostics", "Debugger-style rules, profiler report and smdebug hook; reports go to "
        "--output-data-dir (rules_report.json, profiler_report.html, profiler_summary.json)")
    _flag(g, "rules", type=str2bool, default=True, metavar="BOOL",
          help="evaluate LossNotDecreasing, VanishingGradient, Overfit, Overtraining and "
               "PoorWeightInitialization during training")
    _flag(g, "rules-interval", type=int, default=10, metavar="N",
          help="sample per-layer gradient statistics every N train steps")
    _flag(g, "rule-params", default="", metavar="RULE.PARAM=V,...",
          help="override rule thresholds, e.g. 'overfit.ratio_threshold=0.2,"
               "overtraining.patience_validation=3'; unset = AWS's documented defaults")
    _flag(g, "stop-on-rule", default="", metavar="RULES",
          help="comma-separated rules that stop training when they find issues, e.g. "
               "'overtraining,loss_not_decreasing'")
    _flag(g, "profiler", type=str2bool, default=True, metavar="BOOL",
          help="sample CPU/GPU/memory in the background and write profiler_report.html")
    _flag(g, "profiler-interval", type=float, default=1.0, metavar="SECONDS",
          help="system-metrics sampling period")
    _flag(g, "profiler-trace-steps", type=int, default=0, metavar="N",
          help="record a torch.profiler trace of N train steps (Chrome/Perfetto JSON); "
               "0 = off")
    _flag(g, "profiler-trace-start", type=int, default=5, metavar="STEP",
          help="first train step of the torch.profiler window")
    _flag(g, "debugger", type=str2bool, default=True, metavar="BOOL",
          help="create the smdebug hook when SageMaker wrote a debug hook config")
    _flag(g, "smdebug-out-dir", default="", metavar="DIR",
          help="record losses/weights/gradients with smdebug to DIR without SageMaker; "
               "analyse with 'python -m imgclf.diagnostics.smdebug_rules DIR'")


def build_callbacks(args: argparse.Namespace) -> list:
    callbacks = []
    if getattr(args, "debugger", True) or getattr(args, "smdebug_out_dir", ""):
        from .debugger import SmdebugCallback
        callbacks.append(SmdebugCallback(
            use_sagemaker_config=getattr(args, "debugger", True),
            out_dir=getattr(args, "smdebug_out_dir", "") or None))
    if getattr(args, "rules", True):
        from .rules import RulesCallback, parse_rule_params
        stop_on = [s for s in (getattr(args, "stop_on_rule", "") or "").split(",") if s.strip()]
        callbacks.append(RulesCallback(interval=getattr(args, "rules_interval", 10),
                                       rule_params=parse_rule_params(getattr(args, "rule_params", "")),
                                       stop_on=[s.strip() for s in stop_on]))
    if getattr(args, "profiler", True):
        from .profiler import ProfilerCallback
        callbacks.append(ProfilerCallback(
            interval=getattr(args, "profiler_interval", 1.0),
            trace_steps=getattr(args, "profiler_trace_steps", 0),
            trace_start=getattr(args, "profiler_trace_start", 5)))
    return callbacks
