"""Debugger-style training rules, evaluated during training and offline on smdebug output.

The five rules of SageMaker Debugger that the seed project used, with AWS's documented meaning
and default thresholds (https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-rules.html):

=========================  ====================================================================
LossNotDecreasing          num_steps=10, diff_percent=0.1, increase_threshold_percent=5
                           (+ this project's start_step, patience=2: see the class)
VanishingGradient          threshold=1e-7 (mean |gradient| of a tensor)
Overfit                    start_step=0, patience=1 (here 2), ratio_threshold=0.1
Overtraining               patience_train=5, patience_validation=10, delta=0.01
PoorWeightInitialization   threshold=10.0, distribution_range=0.001, patience=5, steps=10
=========================  ====================================================================

Each rule is a *core*: plain Python fed with observations (losses, gradient statistics,
activation variances), returning a :class:`~.findings.Finding` whenever it evaluates. Two drivers feed
the same cores, so the logic exists once:

- :class:`RulesCallback` (this module), from the training loop's callback signals;
- :mod:`imgclf.diagnostics.smdebug_rules`, custom ``smdebug.rules.Rule`` subclasses run through
  ``smdebug.rules.rule_invoker.invoke_rule`` on a recorded smdebug trial.

Where AWS's description leaves the granularity open, choices made here (documented in README):

- LossNotDecreasing compares the *mean* training loss of consecutive ``num_steps`` windows
  (a single mini-batch loss every step is too noisy to compare), and also fires when the loss
  is not finite or climbs more than ``increase_threshold_percent`` above its best window.
- Overfit and Overtraining work on phase means: the mean training loss of an epoch and the mean
  validation loss of the validation pass that follows it; their patience counts validation
  passes (epochs). ``delta`` is an absolute loss improvement.
- PoorWeightInitialization looks at the first ``steps`` training steps: activation-input
  variance ratio across layers (max/min) above ``threshold``, 5th-95th percentile range of all
  gradient values below ``distribution_range``, or no new loss minimum for ``patience`` steps.

Every evaluation is logged on one stable line, e.g.::

    rule=Overfit status=IssuesFound step=120 epoch=3 ratio=0.5321 ratio_threshold=0.1
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import Iterable, Optional

from imgclf.atomic import atomic_write_json
from imgclf.callbacks import Callback, TrainContext

from .findings import ISSUES_FOUND, NO_ISSUES_FOUND, NOT_EVALUATED, Finding, overall_status

log = logging.getLogger(__name__)

REPORT_FILE = "rules_report.json"

#: One evaluation of a rule is a :class:`~.findings.Finding` (the model the profiler uses too).
Evaluation = Finding


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


class RuleCore:
    """Base of a rule's logic: named parameters with AWS's defaults, a list of evaluations."""

    name = ""
    defaults: dict = {}
    #: parameters that restore AWS's behaviour where this project departs from it
    AWS: dict = {}

    def __init__(self, **params):
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; "
                             f"known: {sorted(self.defaults)}")
        self.params = dict(self.defaults)
        for k, v in params.items():
            self.params[k] = type(self.defaults[k])(v)   # "10" -> 10 (hyperparameters are text)
        self.evaluations: list[Finding] = []

    def _emit(self, step: int, issues: bool, values: dict, message: str = "") -> Evaluation:
        ev = Finding(self.name, int(step), bool(issues), values, message,
                     parameters=self.params)
        self.evaluations.append(ev)
        return ev

    def status(self) -> str:
        return overall_status(self.evaluations)


class LossNotDecreasing(RuleCore):
    """AWS's thresholds on consecutive ``num_steps`` windows of the training loss, plus two
    departures measured with ``make bench-rules`` (README "Debugging and profiling"):
    ``start_step`` (in the loop: the end of the learning-rate warmup, when the loss may rise by
    design) and ``patience`` (that many bad windows in a row; one noisy window is not a trend),
    with the decrease measured against the best earlier window (smoothing: a flat loss whose
    windows alternate up and down by noise is still "not decreasing").
    A non-finite loss is an issue at once."""

    name = "LossNotDecreasing"
    defaults = {"num_steps": 10, "diff_percent": 0.1, "increase_threshold_percent": 5.0,
                "start_step": 0, "patience": 2, "compare_best": 1}
    #: AWS's behaviour: every window judged alone against the previous one
    AWS = {"patience": 1, "compare_best": 0}

    def __init__(self, **params):
        super().__init__(**params)
        self._window: list[float] = []
        self._window_start: Optional[int] = None
        self._prev_mean: Optional[float] = None
        self._best_mean: Optional[float] = None
        self._bad = 0

    def observe_loss(self, step: int, loss: float) -> Optional[Finding]:
        """One training loss (every step in the loop; every saved step offline)."""
        if not _finite(loss):
            self._window, self._window_start = [], None
            return self._emit(step, True, {"loss": float(loss)}, "loss is not finite")
        if step < self.params["start_step"]:
            return None
        if self._window_start is None:
            self._window_start = step
        self._window.append(float(loss))
        if step - self._window_start + 1 < self.params["num_steps"]:
            return None
        cur = _mean(self._window)
        self._window, self._window_start = [], None
        prev, best = self._prev_mean, self._best_mean
        self._prev_mean = cur
        if not _finite(cur):
            return self._emit(step, True, {"loss_mean": cur}, "loss is not finite")
        self._best_mean = cur if best is None or cur < best else best
        if prev is None or not _finite(prev):
            return None                  # first window: nothing to compare with yet
        # progress is measured against the best earlier window, not the previous one: a flat
        # loss whose windows alternate up and down by noise still counts as not decreasing
        ref = best if self.params["compare_best"] else prev
        decrease_pct = (ref - cur) / abs(ref) * 100.0 if ref else 0.0
        above_best_pct = (cur - best) / abs(best) * 100.0 if best else 0.0
        p = self.params
        if above_best_pct > p["increase_threshold_percent"]:
            reason = f"loss rose above its best by more than {p['increase_threshold_percent']}%"
        elif decrease_pct < p["diff_percent"]:
            reason = f"loss decreased by less than {p['diff_percent']}% over {p['num_steps']} steps"
        else:
            reason = ""
        self._bad = self._bad + 1 if reason else 0
        values = {"loss_mean": cur, "previous_loss_mean": prev,
                  "decrease_percent": decrease_pct, "diff_percent": p["diff_percent"],
                  "above_best_percent": above_best_pct, "bad_windows_in_a_row": self._bad,
                  "patience": p["patience"]}
        if reason and self._bad >= p["patience"]:
            return self._emit(step, True, values, f"{reason} ({self._bad} windows in a row)")
        return self._emit(step, False, values)


class VanishingGradient(RuleCore):
    name = "VanishingGradient"
    defaults = {"threshold": 1e-7}

    def observe_gradients(self, step: int, mean_abs: dict) -> Optional[Finding]:
        """``mean_abs``: tensor name -> mean of the absolute gradient values."""
        if not mean_abs:
            return None
        thr = self.params["threshold"]
        below = {k: v for k, v in mean_abs.items() if _finite(v) and v < thr}
        name_min = min(mean_abs, key=lambda k: mean_abs[k])
        values = {"min_mean_abs_gradient": float(mean_abs[name_min]), "min_tensor": name_min,
                  "tensors_below": len(below), "tensors": len(mean_abs), "threshold": thr}
        if below:
            return self._emit(step, True, values, f"{len(below)} gradient tensor(s) with "
                              f"mean |g| < {thr:g}, e.g. {sorted(below)[0]}")
        return self._emit(step, False, values)


class PhaseTracker:
    """Turns a stream of (mode, loss) into (train mean, validation mean) per epoch.

    In the loop, ``close()`` is called at epoch end; offline, when an EVAL segment is followed by
    TRAIN steps (and once at the end).
    """

    def __init__(self):
        self._sums = {"train": [0.0, 0.0], "eval": [0.0, 0.0]}
        self.last_mode: Optional[str] = None

    def add(self, mode: str, loss: float, weight: float = 1.0) -> None:
        if mode in self._sums:
            s = self._sums[mode]
            s[0] += float(loss) * weight
            s[1] += weight
            self.last_mode = mode

    def close(self) -> tuple[Optional[float], Optional[float]]:
        means = tuple(s[0] / s[1] if s[1] else None for s in (self._sums["train"], self._sums["eval"]))
        self._sums = {"train": [0.0, 0.0], "eval": [0.0, 0.0]}
        self.last_mode = None
        return means  # type: ignore[return-value]


class Overfit(RuleCore):
    """AWS's ratio of (validation - training) loss to training loss, with two departures
    measured with ``make bench-rules``: ``patience`` 2 validations (AWS: 1) and, in the loop,
    ``start_step`` after the first epoch and the warmup - early on, batch-norm running
    statistics lag behind the weights and inflate the validation loss of healthy runs."""

    name = "Overfit"
    defaults = {"start_step": 0, "patience": 2, "ratio_threshold": 0.1}
    AWS = {"patience": 1}

    def __init__(self, **params):
        super().__init__(**params)
        self._exceeded = 0

    def observe_phase(self, step: int, train_mean: Optional[float],
                      valid_mean: Optional[float]) -> Optional[Finding]:
        if step < self.params["start_step"] or train_mean is None or valid_mean is None:
            return None
        if not (_finite(train_mean) and _finite(valid_mean)) or train_mean <= 0:
            return None
        ratio = (valid_mean - train_mean) / train_mean
        self._exceeded = self._exceeded + 1 if ratio > self.params["ratio_threshold"] else 0
        values = {"ratio": ratio, "ratio_threshold": self.params["ratio_threshold"],
                  "train_loss": train_mean, "valid_loss": valid_mean,
                  "exceeded_for": self._exceeded, "patience": self.params["patience"]}
        if self._exceeded >= self.params["patience"]:
            return self._emit(step, True, values, "validation loss exceeds training loss by "
                              f"{ratio:.0%} (threshold {self.params['ratio_threshold']:.0%})")
        return self._emit(step, False, values)


class Overtraining(RuleCore):
    name = "Overtraining"
    defaults = {"patience_train": 5, "patience_validation": 10, "delta": 0.01}

    def __init__(self, **params):
        super().__init__(**params)
        self._best = {"train": None, "valid": None}
        self._since = {"train": 0, "valid": 0}

    def _update(self, key: str, value: Optional[float]) -> None:
        if value is None or not _finite(value):
            self._since[key] += 1 if value is not None else 0
            return
        best = self._best[key]
        if best is None or value < best - self.params["delta"]:
            self._best[key], self._since[key] = value, 0
        else:
            self._since[key] += 1

    def observe_phase(self, step: int, train_mean: Optional[float],
                      valid_mean: Optional[float]) -> Optional[Finding]:
        if train_mean is None and valid_mean is None:
            return None
        self._update("train", train_mean)
        self._update("valid", valid_mean)
        p_t, p_v = self.params["patience_train"], self.params["patience_validation"]
        values = {"train_loss": train_mean, "valid_loss": valid_mean,
                  "best_train_loss": self._best["train"], "best_valid_loss": self._best["valid"],
                  "epochs_without_train_improvement": self._since["train"],
                  "epochs_without_valid_improvement": self._since["valid"],
                  "patience_train": p_t, "patience_validation": p_v, "delta": self.params["delta"]}
        reasons = []
        if self._since["valid"] >= p_v:
            reasons.append(f"validation loss has not improved by {self.params['delta']} "
                           f"for {self._since['valid']} epochs")
        if self._since["train"] >= p_t:
            reasons.append(f"training loss has not improved by {self.params['delta']} "
                           f"for {self._since['train']} epochs")
        return self._emit(step, bool(reasons), values, "; ".join(reasons))


class PoorWeightInitialization(RuleCore):
    """AWS's three signals over the first ``steps`` steps. Departure (``make bench-rules``):
    in the loop, where the number of classes C is known (``num_classes``), a stalled loss is
    an issue only while its mean stays above ``chance_factor`` x ln C, the loss of an
    uninformative prediction. At a warmup's tiny learning rate a healthy run's mini-batch
    losses are noise around ln C and "no new minimum for 5 of 10 steps" is chance; a poorly
    initialised network stalls far above it (confidently wrong). ``num_classes=0``: AWS."""

    name = "PoorWeightInitialization"
    defaults = {"threshold": 10.0, "distribution_range": 0.001, "patience": 5, "steps": 10,
                "num_classes": 0, "chance_factor": 1.5}
    AWS = {"num_classes": 0}

    def __init__(self, **params):
        super().__init__(**params)
        self._max_var_ratio = 0.0
        self._var_ratio_step: Optional[int] = None
        self._var_layers: tuple = ()
        self._min_grad_range = math.inf
        self._losses: list[float] = []
        self._first_step: Optional[int] = None
        self.done = False

    def wants(self, step: int) -> bool:
        """True while ``step`` is within the first ``steps`` observed steps."""
        if self.done:
            return False
        return self._first_step is None or step - self._first_step < self.params["steps"]

    def _mark(self, step: int) -> None:
        if self._first_step is None:
            self._first_step = step

    def observe_activation_variances(self, step: int, variances: dict) -> None:
        """``variances``: activation-input name -> variance of its values at this step."""
        self._mark(step)
        vs = {k: v for k, v in variances.items() if _finite(v)}
        if len(vs) < 2:
            return
        lo, hi = min(vs, key=vs.get), max(vs, key=vs.get)
        ratio = vs[hi] / vs[lo] if vs[lo] > 0 else math.inf
        if ratio > self._max_var_ratio:
            self._max_var_ratio, self._var_ratio_step, self._var_layers = ratio, step, (lo, hi)

    def observe_gradient_range(self, step: int, p5: float, p95: float) -> None:
        self._mark(step)
        if _finite(p5) and _finite(p95):
            self._min_grad_range = min(self._min_grad_range, p95 - p5)

    def observe_loss(self, step: int, loss: float) -> Optional[Finding]:
        self._mark(step)
        self._losses.append(float(loss))
        if step - self._first_step + 1 >= self.params["steps"]:
            return self.evaluate(step)
        return None

    def _loss_stalled_for(self) -> int:
        """Steps since the last new minimum of the loss (non-finite losses count as stalled)."""
        best, since = math.inf, 0
        for x in self._losses:
            if _finite(x) and x < best:
                best, since = x, 0
            else:
                since += 1
        return since

    def evaluate(self, step: int) -> Optional[Finding]:
        """Evaluate once, on the first ``steps`` steps (called early if training ends sooner)."""
        if self.done or self._first_step is None:
            return None
        self.done = True
        p = self.params
        stalled = self._loss_stalled_for()
        values = {"activation_variance_ratio": self._max_var_ratio, "threshold": p["threshold"],
                  "min_gradient_p5_p95_range": self._min_grad_range,
                  "distribution_range": p["distribution_range"],
                  "loss_steps_without_new_minimum": stalled, "patience": p["patience"],
                  "steps_analysed": len(self._losses)}
        if self._var_layers:
            values["lowest_variance_layer"], values["highest_variance_layer"] = self._var_layers
        reasons = []
        if self._max_var_ratio > p["threshold"]:
            reasons.append(f"activation-input variance differs {self._max_var_ratio:.3g}x "
                           f"across layers ({self._var_layers[0]} vs {self._var_layers[1]})")
        if self._min_grad_range < p["distribution_range"]:
            reasons.append(f"gradient 5th-95th percentile range {self._min_grad_range:.3g} "
                           f"< {p['distribution_range']:g}")
        chance = math.log(p["num_classes"]) if p["num_classes"] >= 2 else None
        mean_loss = _mean(self._losses)
        values["loss_mean"] = mean_loss
        if chance is not None:
            values["chance_loss"] = chance
        near_chance = chance is not None and _finite(mean_loss) and \
            mean_loss <= p["chance_factor"] * chance
        if stalled >= p["patience"] and not near_chance:
            reasons.append(f"loss made no new minimum for {stalled} of the first "
                           f"{len(self._losses)} steps")
        return self._emit(step, bool(reasons), values, "; ".join(reasons))


RULE_CLASSES = {c.name: c for c in (LossNotDecreasing, VanishingGradient, Overfit, Overtraining,
                                    PoorWeightInitialization)}


def canonical_rule_name(name: str) -> str:
    """'overtraining', 'loss_not_decreasing', 'LossNotDecreasing' -> the rule's class name."""
    key = re.sub(r"[^a-z]", "", name.lower())
    for n in RULE_CLASSES:
        if n.lower() == key:
            return n
    raise ValueError(f"unknown rule {name!r}; known: {', '.join(RULE_CLASSES)}")


def parse_rule_params(text: str) -> dict[str, dict]:
    """'overfit.ratio_threshold=0.2,overtraining.patience_validation=3' -> {rule: {k: v}}."""
    out: dict[str, dict] = {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        m = re.fullmatch(r"([A-Za-z_]+)\.([A-Za-z_0-9]+)=(.+)", item)
        if not m:
            raise ValueError(f"bad rule parameter {item!r}; expected rule.param=value")
        out.setdefault(canonical_rule_name(m.group(1)), {})[m.group(2)] = m.group(3)
    return out


def build_cores(rule_params: Optional[dict] = None, names: Optional[Iterable[str]] = None) -> dict:
    rule_params = rule_params or {}
    names = list(names) if names is not None else list(RULE_CLASSES)
    return {n: RULE_CLASSES[n](**rule_params.get(n, {})) for n in names}


def build_report(cores: dict, source: str, extra: Optional[dict] = None) -> dict:
    """The JSON report: per rule its parameters, overall status and every evaluation."""
    rules = {}
    for name, core in cores.items():
        issues = [e for e in core.evaluations if e.issues]
        rules[name] = {
            "status": core.status(),
            "parameters": core.params,
            "evaluations": len(core.evaluations),
            "issues_found": len(issues),
            "first_issue": issues[0].to_dict() if issues else None,
            "history": [e.to_dict() for e in core.evaluations],
        }
    report = {"source": source, "rules": rules}
    report.update(extra or {})
    return report


def json_safe(obj):
    """Strict JSON: non-finite floats become the strings "inf"/"-inf"/"nan"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def write_report(report: dict, output_dir: str, filename: str = REPORT_FILE) -> str:
    return atomic_write_json(os.path.join(output_dir, filename), json_safe(report), indent=2)


# ---------------------------------------------------------------------------------------------
# The in-loop driver
# ---------------------------------------------------------------------------------------------

#: Activation modules whose inputs PoorWeightInitialization looks at (AWS: ".*relu_input").
ACTIVATION_TYPES = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "GELU", "SiLU",
                    "Sigmoid", "Tanh", "Hardswish", "Mish")


def _distributed() -> bool:
    from imgclf.distributed import enabled   # imports torch: only where the loop runs
    return enabled()


class RulesCallback(Callback):
    """Feeds the rule cores from the training loop's signals and writes ``rules_report.json``.

    Cost: one batched reduction of the gradients every ``interval`` train steps (a single device
    sync), activation forward hooks only during the first ``PoorWeightInitialization.steps``
    steps, plain Python per step otherwise.
    """

    def __init__(self, interval: int = 10, rule_params: Optional[dict] = None,
                 stop_on: Iterable[str] = (), enabled: Optional[Iterable[str]] = None,
                 aws: bool = False, report_file: str = REPORT_FILE):
        """``aws=True``: AWS's parameters and none of the loop's start steps (the baseline
        ``make bench-rules`` compares with), e.g. with ``report_file="rules_report_aws.json"``."""
        self.interval = max(1, int(interval))
        self.aws, self.report_file = aws, report_file
        if aws:
            rule_params = {n: {**c.AWS, **(rule_params or {}).get(n, {})}
                           for n, c in RULE_CLASSES.items()}
        self._explicit = dict(rule_params or {})
        self.cores = build_cores(rule_params, enabled)
        self.stop_on = {canonical_rule_name(n) for n in stop_on}
        self.phases = PhaseTracker()
        self._act_vars: dict = {}
        self._act_handles: list = []
        self._step = 0
        self._epoch: Optional[int] = None
        self._last_status: dict = {}
        self._output_dir: Optional[str] = None
        self._pending_stop: Optional[str] = None
        self._pending_rule = "unknown"
        self._failure: Optional[str] = None

    # -- helpers ------------------------------------------------------------------------------
    def _handle(self, ctx: TrainContext, ev: Optional[Finding]) -> None:
        if ev is None:
            return
        ev.epoch = self._epoch
        changed = self._last_status.get(ev.rule) != ev.status
        self._last_status[ev.rule] = ev.status
        if ctx.is_main:
            if ev.issues or changed:
                (log.warning if ev.issues else log.info)(ev.log_line())
            else:
                log.debug(ev.log_line())
        if ev.issues and ev.rule in self.stop_on and self._pending_stop is None:
            self._pending_stop = f"rule {ev.rule} found issues at step {ev.step}: {ev.message}"
            self._pending_rule = ev.rule
            if not _distributed():
                self._apply_stop(ctx)

    def _apply_stop(self, ctx: TrainContext) -> None:
        if self._pending_stop and ctx.stop_reason is None:
            ctx.stop_reason = self._pending_stop
            if ctx.is_main:
                log.warning('rule=%s action=StopTraining reason="%s"', self._pending_rule,
                            self._pending_stop)

    def _agree_on_stop(self, ctx: TrainContext) -> None:
        """DDP: ranks see different per-step losses; stop all of them, together, at epoch end.

        Every rank calls on_epoch_end at the same point, so one all_reduce here is safe; a rank
        stopping alone mid-epoch would leave the others waiting in the next collective.
        """
        if not _distributed():
            return
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self._pending_stop else 0.0], device=ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            if not self._pending_stop:
                self._pending_stop = "a --stop-on-rule rule found issues on another rank"
            self._apply_stop(ctx)

    def _install_activation_hooks(self, model) -> None:
        counts: dict = {}

        def make(name):
            def hook(module, inputs):
                if not module.training or not inputs:
                    return
                x = inputs[0]
                k = counts.get(name, 0)
                counts[name] = k + 1
                key = name if k == 0 else f"{name}#{k}"   # modules called twice (ResNet's relu)
                self._act_vars[key] = x.detach().float().var()
            return hook

        for name, mod in model.named_modules():
            if type(mod).__name__ in ACTIVATION_TYPES:
                self._act_handles.append(mod.register_forward_pre_hook(make(name or "input")))
        self._act_counts = counts

    def _remove_activation_hooks(self) -> None:
        for h in self._act_handles:
            h.remove()
        self._act_handles = []

    # -- callback methods ---------------------------------------------------------------------
    def _start_steps(self, ctx: TrainContext) -> None:
        """Loop-only defaults (unless given with --rule-params): ``start_step``s - the loss may
        rise during the LR warmup, batch-norm statistics lag during the first epoch - and the
        number of classes PoorWeightInitialization compares the loss with."""
        args, spe = ctx.args, ctx.steps_per_epoch
        if not spe or self.aws:
            return
        warmup = 0
        if getattr(args, "lr_schedule", None) == "cosine":
            warmup = math.ceil(float(getattr(args, "warmup_epochs", 0) or 0) * spe)
        starts = {("LossNotDecreasing", "start_step"): warmup,
                  ("Overfit", "start_step"): max(spe, warmup),
                  ("PoorWeightInitialization", "num_classes"): ctx.num_classes}
        for (name, param), start in starts.items():
            core = self.cores.get(name)
            if core is not None and param not in self._explicit.get(name, {}):
                core.params[param] = start

    def on_train_begin(self, ctx: TrainContext) -> None:
        self._start_steps(ctx)
        self._output_dir = ctx.output_dir if ctx.is_main else None
        if ctx.global_step > 0:   # resumed from a checkpoint
            if self.cores.pop("PoorWeightInitialization", None) is not None and ctx.is_main:
                log.info("rule=PoorWeightInitialization status=NotEvaluated reason=\"resumed at "
                         "step %d: the weights are no longer the initial ones\"", ctx.global_step)
            # Overtraining's patience spans epochs: replay the epochs before the resume
            for h in ctx.history:
                if "Overtraining" in self.cores:
                    self.cores["Overtraining"].observe_phase(
                        ctx.global_step, h.get("train_loss"), h.get("valid_loss"))
        if "PoorWeightInitialization" in self.cores:
            self._install_activation_hooks(ctx.model)
        log.info("rules: evaluating %s (gradient sample every %d steps)%s",
                 ",".join(self.cores), self.interval,
                 f"; stop training on {','.join(sorted(self.stop_on))}" if self.stop_on else "")

    def on_epoch_begin(self, ctx: TrainContext, epoch: int) -> None:
        self._epoch = epoch

    def on_step_begin(self, ctx: TrainContext, mode: str, step: int) -> None:
        if mode == "train" and self._act_handles:
            self._act_vars.clear()
            self._act_counts.clear()

    def on_after_backward(self, ctx: TrainContext, step: int, loss: float) -> None:
        import torch

        self._step = step
        pwi = self.cores.get("PoorWeightInitialization")
        want_pwi = pwi is not None and pwi.wants(step)
        want_vg = "VanishingGradient" in self.cores and step % self.interval == 0
        if not (want_pwi or want_vg):
            return
        named = [(n, p.grad) for n, p in ctx.model.named_parameters() if p.grad is not None]
        if not named:
            return
        with torch.no_grad():
            if want_vg:
                means = torch.stack([g.detach().abs().float().mean() for _, g in named]).cpu()
                self._handle(ctx, self.cores["VanishingGradient"].observe_gradients(
                    step, {n: float(v) for (n, _), v in zip(named, means.tolist())}))
            if want_pwi:
                # percentiles of an evenly strided sample (~200k values) of all gradient
                # values: no 11M-element copy, same 5th/95th percentiles within noise
                total = sum(g.numel() for _, g in named)
                stride = max(1, total // 200_000)
                flat = torch.cat([g.detach().flatten()[::stride].float() for _, g in named])
                q = torch.quantile(flat, torch.tensor([0.05, 0.95], device=flat.device)).cpu()
                pwi.observe_gradient_range(step, float(q[0]), float(q[1]))
                if self._act_vars:
                    keys = list(self._act_vars)
                    vals = torch.stack([self._act_vars[k] for k in keys]).cpu().tolist()
                    pwi.observe_activation_variances(step, dict(zip(keys, vals)))

    def on_step_end(self, ctx: TrainContext, mode: str, step: int, loss: float,
                    batch_size: int, data_time: float, step_time: float) -> None:
        loss = float(loss)
        if mode in ("train", "eval"):
            self.phases.add(mode, loss, max(1, int(batch_size or 1)))
        if mode != "train":
            return
        self._step = step
        if "LossNotDecreasing" in self.cores:
            self._handle(ctx, self.cores["LossNotDecreasing"].observe_loss(step, loss))
        pwi = self.cores.get("PoorWeightInitialization")
        if pwi is not None and pwi.wants(step):
            self._handle(ctx, pwi.observe_loss(step, loss))
            if pwi.done:
                self._remove_activation_hooks()

    def on_epoch_end(self, ctx: TrainContext, epoch: int, metrics: dict) -> None:
        self._epoch = epoch
        train_mean, valid_mean = self.phases.close()
        # the loop's own epoch numbers are authoritative where it reports them
        train_mean = metrics.get("train_loss", train_mean) if metrics else train_mean
        valid_mean = metrics.get("valid_loss", valid_mean) if metrics else valid_mean
        for name in ("Overfit", "Overtraining"):
            if name in self.cores:
                self._handle(ctx, self.cores[name].observe_phase(self._step, train_mean, valid_mean))
        self._agree_on_stop(ctx)
        self._write(ctx)

    def on_train_end(self, ctx: TrainContext, metrics: dict) -> None:
        self._finish(ctx)

    def on_exception(self, ctx: TrainContext, exc: BaseException) -> None:
        self._finish(ctx, failure=f"{type(exc).__name__}: {exc}")

    def _finish(self, ctx: TrainContext, failure: Optional[str] = None) -> None:
        self._failure = failure
        pwi = self.cores.get("PoorWeightInitialization")
        if pwi is not None and not pwi.done:
            self._handle(ctx, pwi.evaluate(self._step))
        self._remove_activation_hooks()
        for name, core in self.cores.items():
            issues = [e for e in core.evaluations if e.issues]
            if not ctx.is_main:
                continue
            log.info("rule=%s status=%s evaluations=%d issues_found=%d%s", name, core.status(),
                     len(core.evaluations), len(issues),
                     f" first_issue_step={issues[0].step}" if issues else "")
        path = self._write(ctx)
        if path:
            log.info("rules: report written to %s%s", path,
                     " (the job failed; the report covers the steps before the failure)"
                     if failure else "")

    def report(self) -> dict:
        return build_report(self.cores, source="training-loop",
                            extra={"stop_on": sorted(self.stop_on), "interval": self.interval,
                                   "training_failed": self._failure})

    def _write(self, ctx: TrainContext) -> Optional[str]:
        if not self._output_dir:
            return None
        return write_report(self.report(), self._output_dir, self.report_file)
