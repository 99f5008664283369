"""The built-in offline photo stream: the 17 photos scikit-image's wheel bundles, random square
crops of each, each photo a class (`--data builtin`)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from tritonsagan.models.config import IMAGE_SIZE

from ..seeding import stream_rng
from .decode import (
    load_rgb,
    to_uint8_tensor,
)
from .stream import SAMPLE_STREAM, DataError, ImageStream

# Photos bundled inside scikit-image's wheel (the ones it downloads at run time are not listed).
BUILTIN_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)


def builtin_photo_dir() -> Path:
    """scikit-image's bundled data folder, found without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("--data builtin needs scikit-image installed (its wheel carries the photos)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


class BuiltinPhotoStream(ImageStream):
    """Random square crops (side image_size .. the photo's shorter side) of scikit-image's bundled
    photos, resized to image_size x image_size and flipped half of the time; each photo is a class.
    `photos` picks a subset."""

    samples_repeat = False

    def __init__(self, seed: int, photos: Sequence[str] = BUILTIN_PHOTOS, image_size: int = IMAGE_SIZE) -> None:
        unknown = sorted(set(photos) - set(BUILTIN_PHOTOS))
        if unknown or not photos:
            raise DataError(
                f"builtin photos must be a non-empty subset of {', '.join(BUILTIN_PHOTOS)}; unknown: {unknown}"
            )
        folder = builtin_photo_dir()
        self.paths = [folder / name for name in photos]
        missing = [p.name for p in self.paths if not p.is_file()]
        if missing:
            raise DataError(f"{folder}: bundled photos missing: {', '.join(missing)}")
        self.classes = [p.stem for p in self.paths]
        self.name = f"builtin ({folder})"
        self.seed, self.image_size = seed, image_size
        self._photos: list[Image.Image] | None = None  # loaded lazily, once per worker

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        if self._photos is None:
            self._photos = [load_rgb(p) for p in self.paths]
        rng = stream_rng(self.seed, index, SAMPLE_STREAM)
        label = int(rng.integers(len(self._photos)))
        photo = self._photos[label]
        size = self.image_size
        side = int(rng.integers(size, min(photo.size) + 1))
        left, top = int(rng.integers(photo.size[0] - side + 1)), int(rng.integers(photo.size[1] - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_uint8_tensor(crop), label, 0
