"""The one model of "a finding": what a training rule or a profiler rule concluded, and why.

Used by the training rules (:mod:`.rules`, one :class:`Finding` per evaluation), the profiler
(:mod:`.profiler`, one per ProfilerReport-style rule at the end of the job) and the reports
(``rules_report.json``, ``profiler_summary.json``, ``profiler_report.html``). Plain Python, no
torch: the offline smdebug driver and the report renderer import it too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Optional

ISSUES_FOUND = "IssuesFound"
NO_ISSUES_FOUND = "NoIssuesFound"
NOT_EVALUATED = "NotEvaluated"


@dataclass
class Finding:
    rule: str
    step: Optional[int] = None         # train step of the evaluation (rules); None: whole job
    issues: Optional[bool] = False     # None: not evaluated (the signal is missing)
    values: dict = field(default_factory=dict)   # the figures behind the status
    message: str = ""                  # the evidence, in words
    epoch: Optional[int] = None
    suggestion: str = ""               # what to do about it
    parameters: dict = field(default_factory=dict)   # thresholds in force

    @property
    def status(self) -> str:
        if self.issues is None:
            return NOT_EVALUATED
        return ISSUES_FOUND if self.issues else NO_ISSUES_FOUND

    def log_line(self, key: str = "rule") -> str:
        """One stable ``key=Name status=... step=... k=v ... message="..."`` line."""
        parts = [f"{key}={self.rule}", f"status={self.status}"]
        if self.step is not None:
            parts.append(f"step={self.step}")
        if self.epoch is not None:
            parts.append(f"epoch={self.epoch}")
        for k, v in self.values.items():
            if isinstance(v, float):
                v = f"{v:.6g}"
            elif isinstance(v, (list, tuple, dict)):
                continue
            parts.append(f"{k}={v}")
        if self.message:
            parts.append(f'message="{self.message}"')
        return " ".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Finding":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def overall_status(findings) -> str:
    """IssuesFound if any finding found issues, NotEvaluated if none was evaluated."""
    findings = list(findings)
    if not findings or all(f.issues is None for f in findings):
        return NOT_EVALUATED
    return ISSUES_FOUND if any(f.issues for f in findings) else NO_ISSUES_FOUND
