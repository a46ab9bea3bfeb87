"""Preprocessing: the single definition used by training, evaluation and serving.

Images are decoded to RGB (``images.decode_image``), turned into uint8 CHW tensors and
resized/cropped *as uint8* (torchvision's fast antialiased uint8 kernels). Normalisation to
float happens on the batch, on the device (``normalize``): DataLoader workers ship 4x fewer
bytes than float tensors, and the GPU does the arithmetic.

Evaluation/serving: resize the short side to ``resize_size`` then centre-crop ``image_size``
(the torchvision ImageNet recipe, 256 -> 224 by default).
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from imgclf.config import DEFAULT_CROP_SCALE
from imgclf.images import Source, decode_image


def default_resize_size(image_size: int) -> int:
    """ImageNet ratio 256/224, e.g. 224 -> 256, 128 -> 146."""
    return int(round(image_size * 256 / 224))


def train_transform(image_size: int, crop_scale: float = DEFAULT_CROP_SCALE) -> v2.Compose:
    """Random crop of ``crop_scale``..100% of the area (aspect 3/4..4/3) to ``image_size``, and a
    horizontal flip."""
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(crop_scale, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
    ])


def eval_transform(image_size: int, resize_size: int) -> v2.Compose:
    return v2.Compose([
        v2.Resize(resize_size, antialias=True),
        v2.CenterCrop(image_size),
    ])


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    return F.pil_to_tensor(img)


def load_uint8(source: Source, transform, draft_size: int | None = None) -> torch.Tensor:
    """Decode ``source`` and apply a uint8 ``transform``; returns a uint8 CHW tensor."""
    return transform(pil_to_uint8(decode_image(source, draft_size=draft_size)))


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              channels_last: bool = False) -> torch.Tensor:
    """uint8 NCHW batch (any device) -> normalised float32 batch on the same device."""
    x = batch.float().div_(255.0)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    x = x.sub_(m).div_(s)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def preprocess_batch(sources: Sequence[Source], image_size: int, resize_size: int,
                     mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Serving/evaluation path for raw images: decode, resize, crop, stack and normalise."""
    tf = eval_transform(image_size, resize_size)
    batch = torch.stack([load_uint8(s, tf, draft_size=resize_size) for s in sources])
    return normalize(batch, mean, std)
