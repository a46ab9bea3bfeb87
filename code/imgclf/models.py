"""Build any torchvision classification architecture by name, with a head for N classes.

Weights (``--weights``):

- ``imagenet``  torchvision's default pretrained weights, downloaded to $TORCH_HOME where the
                network allows (fails with a message naming the offline alternatives);
- ``none``      random initialisation;
- a path        a ``state_dict`` file (or a folder holding one ``.pt``/``.pth``) for the same
                architecture - e.g. the ImageNet file uploaded as a ``pretrained`` channel, for
                network-isolated jobs and offline machines. The classifier head is re-created,
                so 1000-class ImageNet files and N-class fine-tuned files both load.
"""

from __future__ import annotations

import logging
import os

import torch
import torchvision
from torch import nn

from imgclf.failure import UserError

log = logging.getLogger(__name__)

# Architectures with auxiliary classifiers: trained and served without them (the loop expects
# one output), and always with transform_input=True, the input convention of their ImageNet
# weights (torchvision sets it whenever it loads them), so training from those weights - from
# the network or from a file - and serving a rebuilt model all see the same input.
_AUX_HEADS = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}
_AUX_ARCHS = {a: {"aux_logits": False, "init_weights": True, "transform_input": True}
              for a in _AUX_HEADS}


def _drop_aux_heads(model: nn.Module, arch: str) -> None:
    """What torchvision does for aux_logits=False after loading weights with the aux heads."""
    model.aux_logits = False
    for name in _AUX_HEADS.get(arch, ()):
        setattr(model, name, None)


class ModelError(UserError, ValueError):
    """Unknown architecture or unusable weights; the message says what to do."""


def classification_archs() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _head(model: nn.Module) -> tuple[nn.Module, str, nn.Module]:
    """The last Linear (or SqueezeNet's final 1x1 Conv) module: (parent, attribute, module)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and "classifier" in name):
            last = (name, module)
    if last is None:
        raise ModelError(f"cannot find the classifier head of {type(model).__name__}")
    name, module = last
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, module


def head_parameter_names(model: nn.Module) -> set[str]:
    _, _, head = _head(model)
    ids = {id(p) for p in head.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _replace_head(model: nn.Module, num_classes: int) -> None:
    parent, attr, old = _head(model)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size)
    setattr(parent, attr, new)


def _resolve_weights_file(path: str) -> str:
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith((".pt", ".pth")))
        if len(files) != 1:
            raise ModelError(f"weights folder {path!r} must hold exactly one .pt/.pth file, "
                             f"found {files or 'none'}")
        return os.path.join(path, files[0])
    if not os.path.isfile(path):
        raise ModelError(f"weights file {path!r} does not exist")
    return path


def _load_state_dict_file(model: nn.Module, path: str) -> None:
    path = _resolve_weights_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot read weights {path!r}: {e}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    head = {n for n in own if n.rsplit(".", 1)[0] in
            {p.rsplit(".", 1)[0] for p in head_parameter_names(model)}}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and k not in head]
    if missing:
        raise ModelError(f"weights {path!r} do not fit {type(model).__name__}: "
                         f"{len(missing)} tensors missing or mis-shaped, e.g. {missing[:3]}")
    model.load_state_dict(usable, strict=False)
    log.info("loaded weights from %s (%d tensors; head %s)", path, len(usable),
             "kept" if head <= usable.keys() else "re-initialised")


def build_model(arch: str, num_classes: int, weights: str = "none",
                freeze_backbone: bool = False) -> nn.Module:
    """``arch`` from :func:`classification_archs`, a fresh ``num_classes`` head, given weights."""
    if arch not in classification_archs():
        raise ModelError(f"unknown architecture {arch!r}; choose a torchvision classification "
                         f"model such as resnet18, resnet50, efficientnet_b0, mobilenet_v3_large, "
                         f"convnext_tiny, vit_b_16 (all: {', '.join(classification_archs())})")
    if num_classes < 2:
        raise ModelError(f"need at least 2 classes, got {num_classes}")
    kwargs = dict(_AUX_ARCHS.get(arch, {}))
    if weights == "imagenet":
        # torchvision builds the aux-head archs with their aux heads (and insists on it) to
        # load the file; they are dropped afterwards. Only fetching is guarded: any other
        # error is a bug, not "no network".
        try:
            model = torchvision.models.get_model(arch, weights="DEFAULT")
        except OSError as e:  # URLError, HTTPError, SSL errors, no space, read-only TORCH_HOME
            raise ModelError(
                f"cannot fetch ImageNet weights for {arch} ({type(e).__name__}: {e}). Without "
                f"network access either give a state_dict file with --weights PATH (or as a "
                f"'pretrained' input channel), or train from scratch with --weights none") from e
        except RuntimeError as e:
            if "hash" not in str(e).lower():
                raise
            raise ModelError(f"the downloaded ImageNet weights for {arch} are corrupt ({e}); "
                             f"delete them from $TORCH_HOME/hub/checkpoints and retry") from e
        if arch in _AUX_HEADS:
            _drop_aux_heads(model, arch)
        _replace_head(model, num_classes)
    else:
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
        _replace_head(model, num_classes)  # first, so a file with N classes keeps its head
        if weights not in ("none", "", None):
            _load_state_dict_file(model, weights)
    if freeze_backbone:
        trainable = head_parameter_names(model)
        for name, p in model.named_parameters():
            p.requires_grad_(name in trainable)
    return model
