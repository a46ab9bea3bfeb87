"""Atomic file writes: the one "temp file, fsync, rename, fsync the folder" of the package.

A reader (a restarted spot job, SageMaker's S3 sync of /opt/ml/checkpoints, a serving worker)
sees either the old file or the new one, never a torn one, and after :func:`atomic_write`
returns the new content survives a power loss: the data is fsynced before the rename and the
folder after it (a rename alone can be reordered before the data reaches the disk).

Only the standard library: every layer may import it.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Any, Callable


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:   # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:   # some file systems (FUSE mounts) refuse fsync on folders
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[IO], Any], *, binary: bool = True) -> str:
    """Call ``write(f)`` on a temp file next to ``path``, then move it into place durably."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)
    return path


def atomic_write_text(path: str, text: str) -> str:
    return atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(path: str, obj: Any, **dump_kwargs) -> str:
    return atomic_write(path, lambda f: json.dump(obj, f, **dump_kwargs), binary=False)


def atomic_torch_save(obj: Any, path: str) -> str:
    import torch
    return atomic_write(path, lambda f: torch.save(obj, f))
