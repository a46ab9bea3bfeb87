"""Image-folder datasets in the dogImages layout, and fast loaders for them.

Layout: ``train/``, ``valid/`` (or ``validation/``, ``val/``) and ``test/``, each holding
``NNN.Class_Name/*.jpg`` (jpg/jpeg/png, any case). Class names come from the train folders;
valid/test may lack a class but may not bring one train lacks.

Fast path: workers decode (JPEG draft mode for big photos) and resize/crop as uint8; batches
travel as uint8 in pinned memory; normalisation runs on the device (``transforms.normalize``).
Images that cannot be decoded are skipped and counted instead of crashing the epoch.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from imgclf.config import DEFAULT_CROP_SCALE
from imgclf.failure import TrainingError
from imgclf.images import ImageDecodeError
from imgclf.layout import (IMAGE_NAMES, describe_skipped, display_name,  # noqa: F401
                           list_images)  # (display_name: re-exported)
from imgclf.transforms import (default_resize_size, eval_transform, load_uint8,
                               train_transform)

log = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": ("train", "training"), "valid": ("valid", "validation", "val"),
                 "test": ("test",)}


@dataclass
class Splits:
    train: str
    valid: str
    test: str | None


def _find_split(root: str, split: str) -> str | None:
    for name in SPLIT_ALIASES[split]:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    return None


def resolve_splits(data_dir: str | None, train_dir: str | None, valid_dir: str | None,
                   test_dir: str | None) -> Splits:
    """Split folders from separate channels, or from one folder holding all three."""
    if data_dir:
        if not os.path.isdir(data_dir):
            raise TrainingError(f"data folder {data_dir!r} does not exist")
        train_dir = train_dir or _find_split(data_dir, "train")
        valid_dir = valid_dir or _find_split(data_dir, "valid")
        test_dir = test_dir or _find_split(data_dir, "test")
        if not train_dir:
            raise TrainingError(f"no train/ folder in {data_dir!r} (expected train/, valid/ and "
                                f"test/ holding NNN.Class_Name/ image folders)")
    if not train_dir:
        raise TrainingError("no training data: give a 'train' channel (SM_CHANNEL_TRAIN / "
                            "--train-dir) or a 'training' channel holding train/valid/test "
                            "(SM_CHANNEL_TRAINING / --data-dir)")
    if not valid_dir:
        raise TrainingError("no validation data: give a 'valid' (or 'validation') channel / "
                            "--valid-dir, or a valid/ folder next to train/")
    for name, d in (("train", train_dir), ("valid", valid_dir), ("test", test_dir)):
        if d and not os.path.isdir(d):
            raise TrainingError(f"{name} folder {d!r} does not exist")
    return Splits(train_dir, valid_dir, test_dir)


def build_samples(splits: Splits) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Class folder names (from train) and (path, label) samples per split, checked."""
    per_split = {}
    for split in ("train", "valid", "test"):
        folder = getattr(splits, split)
        if not folder:
            continue
        skipped: Counter = Counter()
        per_split[split] = list_images(folder, skipped)
        if skipped:  # .gif, .heic, ...: not read, which the image counts alone would not say
            log.warning("%s: skipped %s", split, describe_skipped(skipped))
    classes = sorted(per_split["train"])
    if not classes:
        raise TrainingError(f"train folder {splits.train!r} holds no class folders with images "
                            f"(expected NNN.Class_Name/*.{{{IMAGE_NAMES}}})")
    if len(classes) < 2:
        raise TrainingError(f"train folder {splits.train!r} has one class ({classes[0]}); "
                            f"a classifier needs at least 2")
    index = {c: i for i, c in enumerate(classes)}
    samples = {}
    for split, found in per_split.items():
        if not found:
            raise TrainingError(f"{split} folder {getattr(splits, split)!r} holds no images in "
                                f"class folders")
        unknown = sorted(set(found) - set(index))
        if unknown:
            raise TrainingError(f"{split} has classes that train lacks: {', '.join(unknown[:10])}"
                                f"{' ...' if len(unknown) > 10 else ''}; every class needs "
                                f"training images")
        missing = sorted(set(index) - set(found))
        if missing:
            log.warning("%s lacks %d class(es): %s", split, len(missing), ", ".join(missing[:10]))
        samples[split] = [(p, index[c]) for c in sorted(found) for p in found[c]]
    return classes, samples


class ImageFolderDataset(Dataset):
    """(path, label) samples -> (uint8 CHW tensor | None, label, path). None = undecodable."""

    def __init__(self, samples, transform, draft_size: int | None = None):
        self.samples = samples
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        try:
            return load_uint8(path, self.transform, self.draft_size), label, path
        except ImageDecodeError as e:
            return None, label, f"{path}: {e}"


@dataclass
class Batch:
    images: torch.Tensor      # uint8 NCHW
    labels: torch.Tensor      # int64 N
    bad: list[str]            # undecodable files skipped in this batch

    def pin_memory(self):
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.bad)


def collate(items) -> Batch:
    good = [(x, y) for x, y, _ in items if x is not None]
    bad = [p for x, _, p in items if x is None]
    if not good:
        return Batch(torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad)
    return Batch(torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good]), bad)


class ShardSampler(Sampler):
    """Every rank takes indices[rank::world] - no padding, so sums over ranks are exact."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loaders(samples, image_size: int, batch_size: int, num_workers: int, rank: int = 0,
                 world: int = 1, seed: int = 0, pin_memory: bool = False,
                 crop_scale: float = DEFAULT_CROP_SCALE, resize_size: int | None = None):
    """Train loader (shuffled, per-rank shard) and eval loaders (in order, per-rank shard); eval
    images are resized to ``resize_size`` (default: the ImageNet ratio) and centre-cropped."""
    resize = resize_size or default_resize_size(image_size)
    common = dict(num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory)
    if num_workers > 0:
        common.update(persistent_workers=True, prefetch_factor=4)
    train_ds = ImageFolderDataset(samples["train"], train_transform(image_size, crop_scale),
                                  draft_size=resize)
    if world > 1:
        train_sampler = torch.utils.data.DistributedSampler(train_ds, world, rank, shuffle=True,
                                                            seed=seed, drop_last=True)
    else:
        train_sampler = torch.utils.data.RandomSampler(
            train_ds, generator=torch.Generator().manual_seed(seed))
    # drop_last: a final batch of one image breaks BatchNorm in train mode
    per_rank = len(train_ds) // world
    loaders = {"train": DataLoader(train_ds, batch_size=batch_size, sampler=train_sampler,
                                   drop_last=per_rank > batch_size, **common)}
    etf = eval_transform(image_size, resize)
    for split in ("valid", "test"):
        if split in samples:
            ds = ImageFolderDataset(samples[split], etf, draft_size=resize)
            loaders[split] = DataLoader(ds, batch_size=batch_size,
                                        sampler=ShardSampler(len(ds), rank, world), **common)
    return loaders
