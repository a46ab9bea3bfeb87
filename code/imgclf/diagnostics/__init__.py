"""Training diagnostics: Debugger-style rules, profiler report, smdebug hook (issue 6).

The training loop calls exactly two functions of this package:

- ``add_arguments(parser)``   adds the diagnostics flags (an argument group);
- ``build_callbacks(args)``   returns the :class:`imgclf.callbacks.Callback` objects to run.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Placeholder until the diagnostics land: no flags yet."""


def build_callbacks(args: argparse.Namespace) -> list:
    return []
