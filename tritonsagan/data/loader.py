"""The training-data loader: which source `--data` names, and endless resumable batches of it."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from tritonsagan.models.config import IMAGE_SIZE

from ..stop_signals import ignore_stop_signals
from .builtin import BuiltinPhotoStream
from .decode import (
    ImageLimits,
)
from .folder import ImageFolderStream
from .packed_reader import (
    PackedDataset,
    is_packed_dataset,
)
from .stream import DataError, ImageStream


def make_dataset(
    data: str,
    seed: int,
    conditional: bool,
    random_crop: bool = True,
    limits: ImageLimits = ImageLimits(),
    image_size: int = IMAGE_SIZE,
) -> ImageStream:
    """--data: "builtin", a packed dataset (tritonsagan-prepare; packed at image_size), or an image
    folder (whose images outside `limits` are skipped), as image_size x image_size images."""
    if data == "builtin":
        return BuiltinPhotoStream(seed, image_size=image_size)
    if is_packed_dataset(data):
        return PackedDataset(data, seed, conditional, image_size)
    return ImageFolderStream(data, seed, conditional, random_crop, limits, image_size)


def check_enough_images(dataset: ImageStream, batch_size: int) -> None:
    """A stream that repeats its images needs at least one batch of them."""
    if dataset.samples_repeat and len(dataset) < batch_size:
        raise DataError(f"{dataset.name}: {len(dataset)} images, fewer than one batch of {batch_size}")


class StreamBatchSampler(Sampler[list[int]]):
    """Endless batches of global sample indices for one rank, starting at batch `start`.

    Batch j of rank r holds indices ((j * world + r) * batch + i), so ranks never share samples.
    """

    def __init__(self, batch_size: int, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.batch_size, self.start, self.rank, self.world_size = batch_size, start, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        j = self.start
        while True:
            first = (j * self.world_size + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))
            j += 1


def make_loader(
    dataset: ImageStream, batch_size: int, start_batch: int, workers: int, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """An endless loader of (uint8 images, labels, skipped) batches, resumable at any batch."""
    check_enough_images(dataset, batch_size)
    return DataLoader(
        dataset,
        batch_sampler=StreamBatchSampler(batch_size, start_batch, rank, world_size),
        num_workers=workers,
        worker_init_fn=ignore_stop_signals,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
