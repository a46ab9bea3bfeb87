"""The dogImages folder layout, torch- and Pillow-free: ``SPLIT/NNN.Class_Name/*.jpg``.

Shared by training (:mod:`imgclf.data`) and the tools that read labelled folders without torch
(``smctl evaluate``, ``smctl data``, ``scripts/local_mode.py``).
"""

from __future__ import annotations

import os
from collections import Counter

#: the files taken as images, by name: torchvision's ``ImageFolder`` list
#: (``torchvision.datasets.folder.IMG_EXTENSIONS``), all of which Pillow decodes
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: for messages: ``jpg|jpeg|png|...``
IMAGE_NAMES = "|".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)


def is_image_file(name: str) -> bool:
    """An image by its name (any case), not a hidden file (``.DS_Store``, macOS ``._x.jpg``)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


def list_images(split_dir: str, skipped: Counter | None = None) -> dict[str, list[str]]:
    """class folder name -> sorted image paths (folders without images are left out). Files in
    class folders that are no image by name (not hidden ones) are counted into ``skipped`` by
    extension, so a caller can say what it left out (:func:`describe_skipped`)."""
    classes: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        files = []
        for root, _, names in os.walk(entry.path):
            for n in names:
                if is_image_file(n):
                    files.append(os.path.join(root, n))
                elif skipped is not None and not n.startswith("."):
                    skipped[os.path.splitext(n)[1].lower() or "no extension"] += 1
        if files:
            classes[entry.name] = sorted(files)
    return classes


def describe_skipped(skipped: Counter) -> str:
    """``'12 file(s) that are no image by name (.gif 10, .heic 2)'``, the commonest first."""
    kinds = ", ".join(f"{ext} {n}" for ext, n in skipped.most_common(5))
    more = ", ..." if len(skipped) > 5 else ""
    return (f"{sum(skipped.values())} file(s) that are no image by name ({kinds}{more}; images "
            f"are {IMAGE_NAMES})")


def display_name(folder: str) -> str:
    """'001.Affenpinscher' -> 'Affenpinscher'; 'Golden_Retriever' -> 'Golden_Retriever'."""
    head, dot, tail = folder.partition(".")
    return tail if dot and head.isdigit() and tail else folder
