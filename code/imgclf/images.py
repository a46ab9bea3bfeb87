"""Robust image decoding shared by training and serving.

Whatever a user uploads or a dataset holds - EXIF-rotated phone photos, grayscale, palette,
RGBA, CMYK or 16-bit images - comes out as an upright 8-bit RGB ``PIL.Image``. Undecodable,
truncated and oversized inputs raise :class:`ImageDecodeError` with a short reason, never a
PIL traceback.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO, Union

from PIL import Image, ImageOps, UnidentifiedImageError

from imgclf.envvars import env_int
from imgclf.failure import SettingError, UserError

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
MAX_PIXELS_ENV = "IMGCLF_MAX_PIXELS"


def max_pixels() -> int:
    """The pixel limit in IMGCLF_MAX_PIXELS (default 64 Mpx); SettingError naming the
    variable when it is not a positive integer. ``serve`` and training call it at start, so a
    typo stops them with one line instead of surfacing as each image's error."""
    return env_int(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS, minimum=1)


# decode_image checks the header's size against MAX_PIXELS before any pixel is decoded, so PIL's
# own check (a warning over ~89 Mpx) is switched off: it would override IMGCLF_MAX_PIXELS.
Image.MAX_IMAGE_PIXELS = None

Source = Union[bytes, bytearray, memoryview, str, os.PathLike, BinaryIO]


class ImageDecodeError(UserError, ValueError):
    """The input is not an image this project can read (empty, corrupt, truncated, too big)."""


#: Pixel limit against decompression bombs (width x height); IMGCLF_MAX_PIXELS overrides it
#: (an unusable value keeps the default here; :func:`max_pixels` refuses it at start).
try:
    MAX_PIXELS = max_pixels()
except SettingError:
    MAX_PIXELS = DEFAULT_MAX_PIXELS


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit grayscale: scale the actual range to 0..255 instead of clipping to white.
        import numpy as np
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.rint(a).astype("uint8")).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def decode_image(source: Source, draft_size: int | None = None) -> Image.Image:
    """Decode ``source`` (bytes, path or file object) to an upright 8-bit RGB image.

    ``draft_size`` lets the JPEG decoder scale down by a power of two while decoding (much
    faster for big photos) as long as both sides stay >= ``draft_size``.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageDecodeError("empty image data")
        source = io.BytesIO(bytes(source))
    try:
        img = Image.open(source)  # reads the header only
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise ImageDecodeError(f"image is {w}x{h} = {w * h} pixels, over the limit of "
                                   f"{MAX_PIXELS} (set IMGCLF_MAX_PIXELS to change it)")
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as e:
        raise ImageDecodeError("data is not a recognised image format") from e
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, EOFError) as e:
        # PIL reports truncated/corrupt files as OSError ("image file is truncated"), and some
        # malformed headers as SyntaxError/ValueError.
        raise ImageDecodeError(f"cannot decode image: {e}") from e
