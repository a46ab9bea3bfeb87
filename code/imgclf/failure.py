"""Explicit failure: typed errors and SageMaker's failure file.

SageMaker shows the content of ``/opt/ml/output/failure`` as the job's FailureReason (first
1024 characters). The toolkit writes an empty one on a non-zero exit; we write the reason.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Callable, Optional

from imgclf.atomic import atomic_write_text

log = logging.getLogger(__name__)

FAILURE_REASON_MAX = 1024  # DescribeTrainingJob FailureReason limit


class UserError(Exception):
    """A problem the user can fix; its message is the whole failure reason (no traceback).
    The errors of the modules above (artifact, images, models) derive from it, so this module
    needs none of them."""


class SettingError(UserError, ValueError):
    """An environment variable of this project's with a value it can't use; the message names
    the variable and what it takes."""


class TrainingError(UserError):
    """A problem the user can fix (bad data, bad hyperparameter...); the message says how."""


def write_failure(output_dir: str | None, message: str) -> str | None:
    if not output_dir:
        return None
    try:
        return atomic_write_text(os.path.join(output_dir, "failure"), message[:FAILURE_REASON_MAX])
    except OSError as e:  # a read-only output dir must not hide the real error
        log.error("could not write the failure file in %s: %s", output_dir, e)
        return None


def fail(output_dir: str | None, exc: BaseException,
         reason: Optional[Callable[[str], str]] = None) -> int:
    """Log ``exc``, write the failure file, return the process exit code.

    ``reason(message)`` may replace the message written (DDP: the first failing rank's).
    """
    if isinstance(exc, UserError):
        message = str(exc)
    else:  # a bug or an environment problem: keep the traceback in the log, not in the reason
        traceback.print_exception(exc, file=sys.stderr)
        message = f"{type(exc).__name__}: {exc}"
    if reason is not None:
        message = reason(message)
    log.error("training failed: %s", message)
    print(f"ERROR: {message}", file=sys.stderr, flush=True)
    write_failure(output_dir, message)
    return 1
