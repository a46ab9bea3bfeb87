"""Small helpers shared by the commands: names, key=value flags, tables, S3 URIs."""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from smctl.errors import ConfigError

#: SageMaker job/model/endpoint names: alphanumerics and hyphens, no leading hyphen.
_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")


def timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%y%m%d-%H%M%S")


def unique_name(base: str, max_len: int = 63) -> str:
    """``base-YYMMDD-HHMMSS`` cut to ``max_len`` (tuning jobs: 32, others: 63)."""
    stamp = timestamp()
    base = re.sub(r"[^a-zA-Z0-9-]+", "-", base).strip("-") or "imgclf"
    return f"{base[: max_len - len(stamp) - 1].rstrip('-')}-{stamp}"


def check_name(name: str, what: str, max_len: int = 63) -> str:
    if not _NAME_RE.match(name) or len(name) > max_len:
        raise ConfigError(f"invalid {what} name {name!r}",
                          f"use letters, digits and hyphens, at most {max_len} characters")
    return name


def parse_pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad {what} {item!r}", f"write it as KEY=VALUE")
        out[key.strip()] = value
    return out


def hp_string(value: Any) -> str:
    """Hyperparameter values are strings in the API; booleans as JSON (true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ConfigError(f"not an S3 URI: {uri!r}", "use s3://bucket/key")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ConfigError(f"S3 URI has no bucket: {uri!r}")
    return bucket, key


def print_table(rows: Iterable[Sequence[Any]], header: Sequence[str], out=None) -> None:
    out = out or sys.stdout
    rows = [["" if c is None else str(c) for c in r] for r in rows]
    widths = [len(h) for h in header]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header).rstrip(), file=out)
    for r in rows:
        print(fmt.format(*r).rstrip(), file=out)


def fmt_time(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


class Poller:
    """Sleep between polls; ``interval`` 0 in tests."""

    def __init__(self, interval: float):
        self.interval = max(0.0, float(interval))

    def sleep(self) -> None:
        if self.interval:
            time.sleep(self.interval)
