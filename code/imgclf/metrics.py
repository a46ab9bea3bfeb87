"""Metric lines printed by training, and the regexes that read them.

This module is the single source of truth for SageMaker ``MetricDefinitions`` (training jobs
and tuning objectives): the launch scripts import :data:`METRIC_DEFINITIONS`, and training prints
its lines through :func:`format_epoch_line` / :func:`format_test_line`, so the two cannot drift.

Lines look like::

    epoch 3/10 train_loss=1.2345 valid_loss=1.3456 valid_acc=0.5123 epoch_time=12.34s images_per_sec=456.7
    average test loss=1.2345 test_acc=0.5012

"average test loss" is the seed project's tuning objective name and is kept verbatim.
"""

from __future__ import annotations

import re

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"

# Each regex carries the line's prefix, so values that other log lines mention (a rule that
# logs "train_loss=...") are never read as metrics.
_EPOCH = r"epoch \d+/\d+ train_loss="
_VALID = _EPOCH + r"\S+ valid_loss="
_ACC = _VALID + r"\S+ valid_acc="
_TIME = _ACC + r"\S+ epoch_time="
_RATE = _TIME + r"\S+ images_per_sec="
_TEST = r"average test loss="

#: metric name -> regex with one capture group (SageMaker's MetricDefinitions format).
METRIC_REGEXES: dict[str, str] = {
    "train_loss": _EPOCH + _NUM,
    "valid_loss": _VALID + _NUM,
    "valid_acc": _ACC + _NUM,
    "epoch_time": _TIME + _NUM + r"s",
    "images_per_sec": _RATE + _NUM,
    "average test loss": _TEST + _NUM,
    "test_acc": _TEST + r"\S+ test_acc=" + _NUM,
}

#: The tuning objective of the seed project (minimised).
OBJECTIVE_METRIC = "average test loss"
OBJECTIVE_TYPE = "Minimize"

#: Ready for CreateTrainingJob/CreateHyperParameterTuningJob ``MetricDefinitions``.
METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": regex} for name, regex in METRIC_REGEXES.items()
]


def format_epoch_line(epoch: int, epochs: int, train_loss: float, valid_loss: float,
                      valid_acc: float, epoch_time: float, images_per_sec: float) -> str:
    return (f"epoch {epoch}/{epochs} train_loss={train_loss:.4f} valid_loss={valid_loss:.4f} "
            f"valid_acc={valid_acc:.4f} epoch_time={epoch_time:.2f}s "
            f"images_per_sec={images_per_sec:.1f}")


def format_test_line(test_loss: float, test_acc: float) -> str:
    return f"average test loss={test_loss:.4f} test_acc={test_acc:.4f}"


def parse_metrics(text: str) -> dict[str, list[float]]:
    """Every value of every metric found in ``text`` (a log), in order - as SageMaker reads them."""
    found: dict[str, list[float]] = {}
    for name, regex in METRIC_REGEXES.items():
        values = [float(m) for m in re.findall(regex, text)]
        if values:
            found[name] = values
    return found
