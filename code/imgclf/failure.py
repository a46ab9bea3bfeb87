"""Explicit failure: typed errors and SageMaker's failure file.

SageMaker shows the content of ``/opt/ml/output/failure`` as the job's FailureReason (first
1024 characters). The toolkit writes an empty one on a non-zero exit; we write the reason.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

log = logging.getLogger(__name__)

FAILURE_REASON_MAX = 1024  # DescribeTrainingJob FailureReason limit


class TrainingError(Exception):
    """A problem the user can fix (bad data, bad hyperparameter...); the message says how."""


def write_failure(output_dir: str | None, message: str) -> str | None:
    if not output_dir:
        return None
    try:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "failure")
        with open(path, "w") as f:
            f.write(message[:FAILURE_REASON_MAX])
        return path
    except OSError as e:  # a read-only output dir must not hide the real error
        log.error("could not write the failure file in %s: %s", output_dir, e)
        return None


def fail(output_dir: str | None, exc: BaseException) -> int:
    """Log ``exc``, write the failure file, return the process exit code."""
    from imgclf.artifact import ArtifactError
    from imgclf.images import ImageDecodeError
    from imgclf.models import ModelError
    expected = (TrainingError, ModelError, ArtifactError, ImageDecodeError)
    if isinstance(exc, expected):
        message = str(exc)
    else:  # a bug or an environment problem: keep the traceback in the log, not in the reason
        traceback.print_exception(exc, file=sys.stderr)
        message = f"{type(exc).__name__}: {exc}"
    log.error("training failed: %s", message)
    print(f"ERROR: {message}", file=sys.stderr, flush=True)
    write_failure(output_dir, message)
    return 1
