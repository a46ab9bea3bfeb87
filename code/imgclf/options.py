"""Option helpers shared by every argparse parser of the package (and smctl's settings).

Standard library only, and importing nothing of ``imgclf``: ``imgclf.config`` and
``imgclf.diagnostics`` both build options with these, so neither has to import the other's
module to get them.

SageMaker passes hyperparameters verbatim as ``--name value``: :func:`option` accepts both
spellings of a multi-word name, and :func:`str2bool` the ``True``/``False`` strings that JSON
booleans arrive as.
"""

from __future__ import annotations

import argparse

TRUE_WORDS = ("1", "true", "yes", "y", "on")
FALSE_WORDS = ("0", "false", "no", "n", "off")


def str2bool(v) -> bool:
    """``True``/``true``/``1``/``yes``/``on`` -> True, the opposites -> False, else an error."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in TRUE_WORDS:
        return True
    if s in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {v!r}")


def tristate(v) -> str:
    """``auto`` or a boolean, returned as 'auto'/'true'/'false'."""
    if str(v).strip().lower() == "auto":
        return "auto"
    return "true" if str2bool(v) else "false"


def option(group, name: str, **kwargs) -> None:
    """Add ``--name`` plus its underscore spelling (``--batch-size`` and ``--batch_size``)."""
    flags = [f"--{name}"]
    if "-" in name:
        flags.append(f"--{name.replace('-', '_')}")
    group.add_argument(*flags, dest=name.replace("-", "_"), **kwargs)
