"""Integer settings from environment variables, each refused by name when unusable.

Shared by serving (:mod:`imgclf.serving.settings`) and the image decoder's pixel limit, so every
variable of this project's gives the same one-line error.
"""

from __future__ import annotations

import os

from imgclf.failure import SettingError


def env_int(name: str, default: int | None, minimum: int | None = None) -> int | None:
    """The integer in ``name`` (``default`` when unset or empty); SettingError (a ValueError)
    naming the variable when it is not an integer or under ``minimum``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise SettingError(f"{name}={value} must be >= {minimum}")
    return value
