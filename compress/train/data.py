"""Small image data sets held in memory, and fast batch loaders over them (with CIFAR-style augmentation).

An ImageFolder tree (``<split>/<class>/<image>``), as a folder or a ``.tar.gz``, is decoded once into a uint8
tensor; batches are cut from it without worker processes, which is the fast path on a 2-core machine.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from compress.errors import InvalidParameterError, check_parameter

SHIPPED_CIFAR = Path(__file__).resolve().parents[2] / "data" / "cifar10-small.tar.gz"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class ImageSet:
    """Decoded images (N x C x H x W, uint8), integer labels and class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, per_class: int, offset: int = 0) -> "ImageSet":
        """The ``per_class`` images of each class starting at ``offset`` within the class (in stored order)."""
        idx = []
        for c in range(len(self.classes)):
            where = torch.nonzero(self.labels == c).flatten()
            idx.append(where[offset:offset + per_class])
        sel = torch.cat(idx)
        return ImageSet(self.images[sel], self.labels[sel], self.classes)


def _decode(blob: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _members(source: Path, split: str) -> Iterator[tuple[str, bytes]]:
    if source.is_dir():
        for p in sorted((source / split).glob("*/*")):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                yield f"{p.parent.name}/{p.name}", p.read_bytes()
        return
    with tarfile.open(source, "r:*") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 3 and parts[-3] == split and m.name.lower().endswith(IMAGE_SUFFIXES):
                yield f"{parts[-2]}/{parts[-1]}", tar.extractfile(m).read()


def load_image_folder(source: str | Path, split: str = "train") -> ImageSet:
    """Decode every image of ``split`` from an ImageFolder tree (folder or .tar.gz) into memory.

    Raises:
        InvalidParameterError: the source does not exist or holds no image of that split.
    """
    source = Path(source)
    if not source.exists():
        raise InvalidParameterError(
            f"Image data not found at {str(source)!r}. Pass a folder or .tar.gz in ImageFolder layout "
            f"(<split>/<class>/<image>), e.g. the shipped subset {str(SHIPPED_CIFAR)!r}.")
    items = sorted(_members(source, split))
    if not items:
        raise InvalidParameterError(
            f"{str(source)!r} holds no images under '{split}/<class>/'. Expected ImageFolder layout with a "
            f"'{split}' split.")
    classes = sorted({name.split("/")[0] for name, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    arrays = [_decode(blob) for _, blob in items]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise InvalidParameterError(
            f"Images of {str(source)!r}/{split} differ in size ({sorted(shapes)[:3]}...); resize them to one size.")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([index[name.split("/")[0]] for name, _ in items], dtype=torch.int64)
    return ImageSet(images, labels, classes)


class TensorLoader:
    """Batches of normalised float images and labels cut from an in-memory :class:`ImageSet`.

    Args:
        data: the images.
        batch_size: images per batch.
        train: shuffle (a new order every epoch, from ``seed`` and the epoch) and augment (random crop after
            4-pixel zero padding, horizontal flip); otherwise one fixed shuffled order, no augmentation.
        drop_last: drop the last incomplete batch.
        rank, world_size: for distributed training, each rank takes every ``world_size``-th batch.
        mean, std: per-channel normalisation of [0, 1] pixels.

    Iterating gives ``(images, labels)``; ``set_epoch(e)`` picks the epoch's order; ``start_batch`` skips
    batches already done (resume inside an epoch).
    """

    def __init__(self, data: ImageSet, batch_size: int = 128, train: bool = False, seed: int = 0,
                 drop_last: bool | None = None, rank: int = 0, world_size: int = 1,
                 mean: tuple = CIFAR_MEAN, std: tuple = CIFAR_STD) -> None:
        check_parameter(isinstance(batch_size, int) and batch_size > 0, "batch_size", "TensorLoader",
                        "a positive int", batch_size)
        check_parameter(len(data) > 0, "data", "TensorLoader", "a non-empty ImageSet", f"{len(data)} images")
        self.data, self.batch_size, self.train, self.seed = data, batch_size, train, seed
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world_size = rank, world_size
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        n = len(self.data)
        if not self.train:  # a fixed mixed order, so that the first batches hold every class
            return torch.randperm(n, generator=torch.Generator().manual_seed(12345))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(n, generator=g)

    def _batches(self) -> list[torch.Tensor]:
        order = self._order()
        b = self.batch_size
        chunks = [order[i:i + b] for i in range(0, len(order), b)]
        if self.drop_last and chunks and len(chunks[-1]) < b:
            chunks = chunks[:-1]
        if self.world_size > 1:
            usable = len(chunks) - len(chunks) % self.world_size  # equal count per rank
            chunks = chunks[self.rank:usable:self.world_size]
        return chunks

    def __len__(self) -> int:
        return len(self._batches())

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
        dy = torch.randint(0, 9, (n,), generator=g)
        dx = torch.randint(0, 9, (n,), generator=g)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # n x h
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # n x w
        flip = torch.rand(n, generator=g) < 0.5
        cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
        bidx = torch.arange(n).view(n, 1, 1, 1)
        cidx = torch.arange(x.shape[1]).view(1, -1, 1, 1)
        return padded[bidx, cidx, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, idx in enumerate(self._batches()):
            if i < self.start_batch:
                continue
            x = self.data.images[idx].float().div_(255)
            if self.train:  # randomness fixed per (seed, epoch, rank, batch): resuming mid-epoch repeats it
                g = torch.Generator().manual_seed(((self.seed * 7919 + self.epoch) * 131 + self.rank) * 100_003 + i)
                x = self._augment(x, g)
            yield (x - self.mean) / self.std, self.data.labels[idx]


def cifar10_loaders(source: str | Path | None = None, batch_size: int = 128, train_per_class: int | None = None,
                    val_per_class: int | None = None, seed: int = 0) -> tuple[TensorLoader, TensorLoader]:
    """Train (shuffled, augmented) and test loaders over CIFAR-10 JPEGs (default: the subset shipped with
    the project, 1,000 train and 200 test images per class)."""
    source = SHIPPED_CIFAR if source is None else Path(source)
    train, test = load_image_folder(source, "train"), load_image_folder(source, "test")
    if train_per_class:
        train = train.subset(train_per_class)
    if val_per_class:
        test = test.subset(val_per_class)
    return (TensorLoader(train, batch_size, train=True, seed=seed),
            TensorLoader(test, max(batch_size, 256), train=False))
