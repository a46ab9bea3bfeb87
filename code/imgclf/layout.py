"""The dogImages folder layout, torch- and Pillow-free: ``SPLIT/NNN.Class_Name/*.jpg``.

Shared by training (:mod:`imgclf.data`) and the tools that read labelled folders without torch
(``smctl evaluate``, ``smctl data``, ``scripts/local_mode.py``).
"""

from __future__ import annotations

import os

#: the files taken as images, by name: torchvision's ``ImageFolder`` list
#: (``torchvision.datasets.folder.IMG_EXTENSIONS``), all of which Pillow decodes
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    """An image by its name (any case), not a hidden file (``.DS_Store``, macOS ``._x.jpg``)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


def list_images(split_dir: str) -> dict[str, list[str]]:
    """class folder name -> sorted image paths (folders without images are left out)."""
    classes: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        files = []
        for root, _, names in os.walk(entry.path):
            files.extend(os.path.join(root, n) for n in names if is_image_file(n))
        if files:
            classes[entry.name] = sorted(files)
    return classes


def display_name(folder: str) -> str:
    """'001.Affenpinscher' -> 'Affenpinscher'; 'Golden_Retriever' -> 'Golden_Retriever'."""
    head, dot, tail = folder.partition(".")
    return tail if dot and head.isdigit() and tail else folder
