"""The project's five rules as smdebug ``Rule`` subclasses, for recorded smdebug output.

The rule logic is :mod:`imgclf.diagnostics.rules` (the cores); these classes only read tensors
from a trial and feed the same cores, so in-loop and offline results follow one implementation.

    python -m imgclf.diagnostics.smdebug_rules TRIAL_DIR [--output-dir DIR] [--rule-params ...]

runs all five through ``smdebug.rules.rule_invoker.invoke_rule`` and writes
``rules_report.json`` (source ``smdebug``). TRIAL_DIR is a ``--smdebug-out-dir`` folder or a
SageMaker job's Debugger output (downloaded from S3). smdebug's ``create_trial`` waits forever
on a folder without output, so :func:`run_offline` refuses such a folder first.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Optional

import numpy as np
from smdebug.core.modes import ModeKeys
from smdebug.rules.rule import Rule
from smdebug.rules.rule_invoker import invoke_rule

from . import rules as R
from .debugger import ACTIVATION_INPUT_REGEX

log = logging.getLogger(__name__)

_LOOP_MODE = {ModeKeys.TRAIN: "train", ModeKeys.EVAL: "eval"}


class _CoreRule(Rule):
    """Shared plumbing: one core, tensor lookups by collection, NaN-safe values."""

    core_class: type = R.RuleCore

    def __init__(self, base_trial, action_str: str = "", **params):
        super().__init__(base_trial, action_str=action_str)
        self.core = self.core_class(**params)
        self.evaluations: list = []

    def _record(self, ev) -> bool:
        if ev is not None:
            self.evaluations.append(ev)
            return ev.issues
        return False

    def _names(self, collection: str) -> list:
        try:
            return self.base_trial.tensor_names(collection=collection)
        except Exception as e:   # smdebug raises a bare KeyError-like error for unknown collections
            log.debug("no collection %s in trial: %s", collection, e)
            return []

    def _value(self, name: str, step: int) -> Optional[np.ndarray]:
        t = self.base_trial.tensor(name)
        if step not in t.steps():
            return None
        return np.asarray(t.value(step), dtype=np.float64)

    def _loss(self, step: int) -> Optional[float]:
        for name in self._names("losses"):
            v = self._value(name, step)
            if v is not None:
                return float(v.mean())
        return None

    def _mode(self, step: int) -> Optional[str]:
        return _LOOP_MODE.get(self.base_trial.mode(step))

    def finish(self, last_step: int) -> None:
        """Called once after invoke_rule: evaluations that need the end of the stream."""


class LossNotDecreasingRule(_CoreRule):
    core_class = R.LossNotDecreasing

    def invoke_at_step(self, step):
        loss = self._loss(step)
        if loss is None or self._mode(step) != "train":
            return False
        # train-mode step numbers, as in the loop (global steps interleave EVAL steps)
        return self._record(self.core.observe_loss(self.base_trial.mode_step(step), loss))


class VanishingGradientRule(_CoreRule):
    core_class = R.VanishingGradient

    def invoke_at_step(self, step):
        stats = {}
        for name in self._names("gradients"):
            v = self._value(name, step)
            if v is not None:
                stats[name.replace("gradient/", "", 1)] = float(np.abs(v).mean())
        return self._record(self.core.observe_gradients(step, stats)) if stats else False


class _PhaseRule(_CoreRule):
    """Overfit/Overtraining: epoch = a TRAIN segment followed by an EVAL segment."""

    def __init__(self, base_trial, action_str: str = "", **params):
        super().__init__(base_trial, action_str=action_str, **params)
        self.phases = R.PhaseTracker()
        self._last_step = 0

    def invoke_at_step(self, step):
        loss, mode = self._loss(step), self._mode(step)
        if loss is None or mode is None:
            return False
        fired = False
        if mode == "train" and self.phases.last_mode == "eval":
            fired = self._record(self.core.observe_phase(self._last_step, *self.phases.close()))
        self.phases.add(mode, loss)
        self._last_step = step
        return fired

    def finish(self, last_step):
        if self.phases.last_mode == "eval":
            self._record(self.core.observe_phase(self._last_step, *self.phases.close()))


class OverfitRule(_PhaseRule):
    core_class = R.Overfit


class OvertrainingRule(_PhaseRule):
    core_class = R.Overtraining


class PoorWeightInitializationRule(_CoreRule):
    core_class = R.PoorWeightInitialization

    def invoke_at_step(self, global_step):
        if self._mode(global_step) != "train":
            return False
        step = self.base_trial.mode_step(global_step)   # train-mode step, as in the loop
        if not self.core.wants(step):
            return False
        grads = [self._value(n, global_step) for n in self._names("gradients")]
        grads = [g.ravel() for g in grads if g is not None]
        if grads:
            p5, p95 = np.percentile(np.concatenate(grads), [5, 95])
            self.core.observe_gradient_range(step, float(p5), float(p95))
        variances = {}
        for name in self.base_trial.tensor_names(regex=[ACTIVATION_INPUT_REGEX]):
            v = self._value(name, global_step)
            if v is not None:
                variances[re.sub(r"_input_\d+$", "", name)] = float(v.var())
        self.core.observe_activation_variances(step, variances)
        loss = self._loss(global_step)
        if loss is not None:
            return self._record(self.core.observe_loss(step, loss))
        return False

    def finish(self, last_step):
        self._record(self.core.evaluate(self.base_trial.mode_step(last_step)))


RULES = {"LossNotDecreasing": LossNotDecreasingRule, "VanishingGradient": VanishingGradientRule,
         "Overfit": OverfitRule, "Overtraining": OvertrainingRule,
         "PoorWeightInitialization": PoorWeightInitializationRule}


def _has_output(trial_dir: str) -> bool:
    return os.path.isdir(os.path.join(trial_dir, "index")) or os.path.isdir(
        os.path.join(trial_dir, "events"))


def run_offline(trial_dir: str, output_dir: Optional[str] = None,
                rule_params: Optional[dict] = None) -> dict:
    """Run the five rules on a recorded trial; returns (and optionally writes) the report."""
    if not trial_dir.startswith("s3://") and not _has_output(trial_dir):
        raise FileNotFoundError(f"{trial_dir}: no smdebug output (index/ or events/) - "
                                "create_trial would wait forever")
    from smdebug.trials import create_trial

    trial = create_trial(trial_dir)
    steps = trial.steps()
    rule_params = rule_params or {}
    cores = {}
    for name, cls in RULES.items():
        rule = cls(trial, **rule_params.get(name, {}))
        if steps:
            invoke_rule(rule, start_step=steps[0], end_step=steps[-1] + 1)
            rule.finish(steps[-1])
        cores[name] = rule.core
        for ev in rule.core.evaluations:
            if ev.issues:
                log.warning(ev.log_line())
        log.info("rule=%s status=%s evaluations=%d source=smdebug", name, rule.core.status(),
                 len(rule.core.evaluations))
    report = R.build_report(cores, source="smdebug",
                            extra={"trial": trial_dir, "steps": len(steps)})
    if output_dir:
        path = R.write_report(report, output_dir)
        log.info("rules: offline report written to %s", path)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trial_dir", help="smdebug output folder (local path or s3://...)")
    p.add_argument("--output-dir", default=".", help="where rules_report.json goes (default: .)")
    p.add_argument("--rule-params", default="", help="e.g. 'overfit.ratio_threshold=0.2'")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run_offline(a.trial_dir, a.output_dir, R.parse_rule_params(a.rule_params))
    return 1 if any(r["status"] == R.ISSUES_FOUND for r in report["rules"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
