"""What every training-data source is (`ImageStream`), its errors, and the per-epoch draws.

Every sample is a pure function of (seed, global sample index): which image, the crop and the flip
(tritonsagan.seeding). So a run resumed at step k reads exactly the samples the uninterrupted run
would have read, with any number of DataLoader workers and on any number of ranks. Sample i of a
finite dataset of n items is item order_e[i mod n] of epoch e = i // n, where order_e is a fresh
permutation per epoch; each worker computes it once per epoch (`epoch_order`), so a sample costs the
same for 100 files as for a million. Batches stay uint8 until they are on the device
(`images.from_uint8`): a quarter of the bytes of float32 to move.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch.utils.data import Dataset

from ..errors import TritonsaganError
from ..seeding import stream_rng


class DataError(TritonsaganError, ValueError):
    """The training data cannot be used (missing, empty, too small)."""


# The last word of each random stream's seed: a sample's crop and flip never share numbers with an
# epoch's permutation, even where a sample index equals an epoch number.
SAMPLE_STREAM = 0


EPOCH_ORDER_STREAM = 7
EPOCH_FLIP_STREAM = 13


class ImageStream(Dataset):
    """What every training-data source is, and all the loader and the evaluation rely on.

    Item i is sample i of an endless stream: `(uint8 (3, image_size, image_size) image, class index,
    skipped)`, `skipped` counting unreadable files passed over to find it. `len()` is the number of
    distinct items, `classes` their class names ([] when unconditional), `name` says where the data is
    (in messages). `samples_repeat`: the stream shows the same len() images epoch after epoch, so one
    batch needs that many (False where every sample is a fresh random crop).
    """

    classes: list[str]
    name: str
    image_size: int
    samples_repeat = True

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class EpochDraw:
    """An array over n items drawn afresh for each epoch, a pure function of (seed, epoch, stream),
    computed once per epoch and kept (each DataLoader worker keeps its own): see epoch_order and
    epoch_flips."""

    def __init__(self, seed: int, n: int, stream: int, draw: Callable[[np.random.Generator, int], np.ndarray]) -> None:
        self.seed, self.n, self.stream, self.draw = seed, n, stream, draw
        self._epoch, self._values = -1, np.empty(0)

    def __call__(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._values = epoch, self.draw(stream_rng(self.seed, epoch, self.stream), self.n)
        return self._values


def _permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.permutation(n)


def _coins(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.random(n) < 0.5


def epoch_order(seed: int, n: int) -> EpochDraw:
    """The permutation of the n items for each epoch."""
    return EpochDraw(seed, n, EPOCH_ORDER_STREAM, _permutation)


def epoch_flips(seed: int, n: int) -> EpochDraw:
    """A fair coin per position of each epoch: whether that sample is flipped left-right."""
    return EpochDraw(seed, n, EPOCH_FLIP_STREAM, _coins)
