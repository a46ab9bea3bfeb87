"""The one hyperparameter schema: ``train.py``'s own parser (``imgclf.config``).

Nothing here spells a hyperparameter by hand. Names, types and choices come from the parser's
options; bounds (lr > 0, image-size 16..1024, ...) from ``imgclf.config.validate``, the same
check the job runs. So ``smctl train``, ``smctl tune`` and ``smctl tune --local`` refuse a bad
name or value with exit 2 and one line *before* anything is sent or a trial started, instead of
the job failing after instances are billed.

- :func:`canonical` - ``batch_size``, ``--batch_size`` and ``batch-size`` are one name
  (``batch-size``, the spelling of ``train.py --help``); an unknown name is refused with the
  closest valid ones.
- :func:`static_hyperparameters` - canonical names, values checked, as API strings.
- :func:`search_space` - ``[tune.ranges]`` checked and normalised (type, bounds, scaling).

Importing this module does not import torch (``imgclf.config`` is standard library only).
"""

from __future__ import annotations

import argparse
import difflib
import math
from functools import lru_cache
from typing import Any, Mapping

from smctl.errors import ConfigError
from smctl.util import hp_string

SCALINGS = ("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")
RANGE_TYPES = ("continuous", "integer", "categorical")


def is_internal(name: str) -> bool:
    """SageMaker's own hyperparameters (``_tuning_objective_metric``, ``sagemaker_program``):
    passed through unchecked, never tuned."""
    return name.startswith("_") or name.startswith("sagemaker_")


@lru_cache(maxsize=1)
def _options() -> dict[str, argparse.Action]:
    """Canonical name -> the parser's action, for every option of train.py."""
    from imgclf.config import build_parser
    out = {}
    for action in build_parser()._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            out[longs[0][2:]] = action
    return out


def names() -> list[str]:
    return sorted(_options())


def canonical(name: str, what: str = "hyperparameter") -> str:
    """The parser's spelling of ``name``; ConfigError naming the closest names if unknown."""
    key = str(name).strip().lstrip("-").replace("_", "-")
    if key in _options():
        return key
    close = difflib.get_close_matches(key, names(), n=3, cutoff=0.6)
    hint = (f"did you mean {', '.join(close)}?" if close else "") + \
        " (every name: .venv/bin/python code/train.py --help)"
    raise ConfigError(f"unknown {what} {name!r}", hint.strip())


def default(name: str) -> Any:
    """train.py's default for a (canonical) name."""
    return _options()[name].default


def _kind(name: str) -> type | None:
    t = _options()[name].type
    return t if t in (int, float) else None


def check(hps: Mapping[str, str]) -> None:
    """Run ``hps`` (canonical names, API strings) through train.py's parser and validation."""
    from imgclf.config import parse_args
    from imgclf.failure import TrainingError
    argv = []
    for k, v in hps.items():
        if not is_internal(k):
            argv += [f"--{k}", v]
    try:
        parse_args(argv)
    except TrainingError as e:
        msg = str(e).replace(" (see train.py --help)", "")
        raise ConfigError(msg, "see .venv/bin/python code/train.py --help") from None


def canonical_hyperparameters(hps: Mapping[str, Any], what: str = "hyperparameter") -> dict[str, str]:
    """Canonical names (later spellings of one name win), API string values; not yet checked."""
    out: dict[str, str] = {}
    for k, v in hps.items():
        out[k if is_internal(k) else canonical(k, what)] = hp_string(v)
    return out


def static_hyperparameters(*layers: Mapping[str, Any]) -> dict[str, str]:
    """Merge layers (later wins, compared by canonical name), check the result, API strings."""
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update(canonical_hyperparameters(layer))
    check(merged)
    return merged


def search_space(ranges: Mapping[str, Mapping[str, Any]],
                 static: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """``[tune.ranges]`` -> ``{name: {"type", "min"/"max"/"scaling" | "values"}}``, canonical
    names, every bound and value checked by train.py's parser (together with ``static``)."""
    static = dict(static or {})
    out: dict[str, dict[str, Any]] = {}
    for raw, spec in ranges.items():
        name = canonical(raw, "tuned hyperparameter")
        if name in out:
            raise ConfigError(f"tune range {name} is given twice ({raw!r})",
                              "keep one spelling in [tune.ranges]")
        where = f"tune range {name}"
        kind = str(spec.get("type", "")).lower()
        if kind not in RANGE_TYPES:
            raise ConfigError(f"{where}: type {spec.get('type')!r}",
                              "use continuous, integer or categorical")
        if kind == "categorical":
            values = spec.get("values")
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"{where}: categorical needs values = [...]")
            values = [hp_string(v) for v in values]
            for v in values:
                check({**static, name: v})
            out[name] = {"type": kind, "values": values}
            continue
        if "min" not in spec or "max" not in spec:
            raise ConfigError(f"{where}: {kind} needs min and max")
        option_type = _kind(name)
        if option_type is None:
            raise ConfigError(f"{where}: {name} is not a number", "make it categorical")
        if kind == "continuous" and option_type is int:
            raise ConfigError(f"{where}: {name} is an integer", "use type = integer or categorical")
        try:
            lo, hi = (int(spec["min"]), int(spec["max"])) if kind == "integer" \
                else (float(spec["min"]), float(spec["max"]))
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: min/max must be numbers, got {spec['min']!r}, "
                              f"{spec['max']!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise ConfigError(f"{where}: min {spec['min']} is not below max {spec['max']}")
        scaling = spec.get("scaling", "Auto")
        if scaling not in SCALINGS:
            raise ConfigError(f"{where}: scaling {scaling!r}", f"choose from {', '.join(SCALINGS)}")
        if scaling in ("Logarithmic", "ReverseLogarithmic") and lo <= 0:
            raise ConfigError(f"{where}: {scaling} scaling needs min > 0, got {spec['min']}")
        if scaling == "ReverseLogarithmic" and (kind == "integer" or hi >= 1):
            raise ConfigError(f"{where}: ReverseLogarithmic needs a continuous range in (0, 1)")
        for v in (lo, hi):
            check({**static, name: hp_string(v)})
        out[name] = {"type": kind, "min": lo, "max": hi, "scaling": scaling}
    if not out:
        raise ConfigError("[tune.ranges] is empty", "give at least one range, or drop the table "
                                                    "for the seed's lr + batch-size")
    return out
