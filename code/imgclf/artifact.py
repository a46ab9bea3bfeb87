"""The model artifact: the one format training writes and serving reads.

``SM_MODEL_DIR`` (SageMaker tars it into model.tar.gz) holds:

- ``model.pt``    the weights, a plain ``state_dict`` (``torch.save``), loadable with
                  ``weights_only=True``;
- ``model.json``  what is needed to rebuild and feed the model: arch, num_classes, class names,
                  image/resize size, normalisation, plus versions, hyperparameters and metrics.

Serving builds the network from ``model.json`` (never from hand-copied class counts) and loads
``model.pt`` into it.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from imgclf.atomic import atomic_torch_save, atomic_write_json
from imgclf.failure import UserError

WEIGHTS_FILE = "model.pt"
META_FILE = "model.json"
FORMAT_VERSION = 1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ArtifactError(UserError):
    """The model directory is missing, incomplete or inconsistent."""


@dataclass
class ModelMeta:
    arch: str
    classes: list[str]
    image_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    format_version: int = FORMAT_VERSION
    versions: dict[str, str] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_classes"] = self.num_classes
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelMeta":
        required = ("arch", "classes")
        missing = [k for k in required if k not in d]
        if missing:
            raise ArtifactError(f"{META_FILE} lacks {', '.join(missing)}")
        if int(d.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
            raise ArtifactError(f"{META_FILE} has format_version {d['format_version']}; this code "
                                f"reads up to {FORMAT_VERSION}")
        classes = list(d["classes"])
        if not classes:
            raise ArtifactError(f"{META_FILE} lists no classes")
        if "num_classes" in d and int(d["num_classes"]) != len(classes):
            raise ArtifactError(f"{META_FILE}: num_classes={d['num_classes']} but "
                                f"{len(classes)} class names")
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["classes"] = classes
        for k in ("mean", "std"):
            if k in kwargs:
                kwargs[k] = tuple(float(x) for x in kwargs[k])
        return cls(**kwargs)


def runtime_versions() -> dict[str, str]:
    import PIL
    import torch
    import torchvision

    from imgclf import __version__
    return {"imgclf": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pillow": PIL.__version__}


def save_artifact(model_dir: str, state_dict: dict, meta: ModelMeta) -> None:
    """Write model.pt, then model.json, each atomically (:mod:`imgclf.atomic`), into
    ``model_dir``: a model.json always describes the model.pt next to it."""
    if not meta.versions:
        meta.versions = runtime_versions()
    atomic_torch_save(state_dict, os.path.join(model_dir, WEIGHTS_FILE))
    atomic_write_json(os.path.join(model_dir, META_FILE), meta.to_dict(), indent=2, sort_keys=True)


def read_meta(model_dir: str) -> ModelMeta:
    path = os.path.join(model_dir, META_FILE)
    if not os.path.isfile(path):
        raise ArtifactError(f"no {META_FILE} in {model_dir!r}: is this a model directory written "
                            f"by train.py (or an unpacked model.tar.gz)?")
    try:
        with open(path) as f:
            return ModelMeta.from_dict(json.load(f))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ArtifactError(f"{path} is not valid model metadata: {e}") from e


def load_artifact(model_dir: str, device: str = "cpu"):
    """Rebuild the network from model.json and load model.pt. Returns ``(model.eval(), meta)``."""
    import torch

    from imgclf.models import build_model  # local import: keeps metadata reads torch-free
    meta = read_meta(model_dir)
    weights = os.path.join(model_dir, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise ArtifactError(f"no {WEIGHTS_FILE} in {model_dir!r}")
    try:
        state = torch.load(weights, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        raise ArtifactError(f"{weights} cannot be read as a state_dict: {e}") from e
    model = build_model(meta.arch, meta.num_classes, weights="none")
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"{weights} does not fit arch={meta.arch} with "
                            f"{meta.num_classes} classes: {str(e)[:500]}") from e
    return model.to(device).eval(), meta
