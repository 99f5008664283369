"""Reading a packed dataset (tritonsagan.data.packed_writer makes them): its manifest checked, its
shards memory-mapped, a stream of its images in a fresh order each epoch, each flipped left-right by
the epoch's coin for its position (nothing is decoded)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from tritonsagan.models.config import IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZES

from .folder import LISTED_NAMES
from .stream import DataError, ImageStream, epoch_flips, epoch_order

FORMAT = "tritonsagan-packed"


VERSION = 1


MANIFEST_NAME = "manifest.json"


# What a manifest must hold, with its type (a damaged or hand-edited one is refused by name), and each shard entry.
MANIFEST_FIELDS = {"complete": bool, "conditional": bool, "classes": list, "shards": list, "count": int}


SHARD_FIELDS = {"images": str, "labels": str, "count": int}


def is_packed_dataset(path: str | os.PathLike) -> bool:
    """Whether `path` is meant as a packed dataset: a manifest naming the format, or one beside image
    shards (a damaged manifest is then refused by read_manifest, not read as an empty image folder)."""
    root = Path(path)
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        return False
    if any(root.glob("images_*.npy")):
        return True
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def read_manifest(root: str | os.PathLike) -> dict:
    path = Path(root) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{root}: not a packed dataset (no {MANIFEST_NAME})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a tritonsagan packed dataset manifest")
    if manifest.get("version") != VERSION or manifest.get("image_size") not in IMAGE_SIZES:
        raise DataError(
            f"{path}: packed with format version {manifest.get('version')} at {manifest.get('image_size')}px; "
            f"this tritonsagan reads version {VERSION} at {', '.join(map(str, IMAGE_SIZES))}px"
        )
    problems = _wrong_fields(manifest, MANIFEST_FIELDS, "")
    for index, shard in enumerate(manifest.get("shards") if isinstance(manifest.get("shards"), list) else []):
        problems += (
            _wrong_fields(shard, SHARD_FIELDS, f"shards[{index}].")
            if isinstance(shard, dict)
            else [f"shards[{index}] is not an object"]
        )
    if problems:
        raise DataError(
            f"{path}: damaged or hand-edited manifest: {'; '.join(problems[:5])}; pack the dataset again with tritonsagan-prepare"
        )
    return manifest


def _wrong_fields(entry: dict, fields: dict[str, type], prefix: str) -> list[str]:
    """What is missing from `entry` or of the wrong type (bool is not an int here)."""
    problems = []
    for key, kind in fields.items():
        value = entry.get(key)
        if key not in entry:
            problems.append(f"no {prefix}{key}")
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"{prefix}{key} should be a {kind.__name__}, is {value!r}")
    return problems


def shard_names(index: int) -> tuple[str, str]:
    return f"images_{index:05d}.npy", f"labels_{index:05d}.npy"


def image_shape(size: int) -> tuple[int, int, int]:
    return (IMAGE_CHANNELS, size, size)


def open_shard(root: Path, shard: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The shard's images (memory-mapped) and labels, checked against the manifest (images of `size`)."""
    arrays = []
    for key, shape, dtype in (
        ("images", (shard["count"], *image_shape(size)), np.uint8),
        ("labels", (shard["count"],), np.int64),
    ):
        path = root / shard[key]
        if not path.is_file():
            raise DataError(
                f"{path}: shard file missing (the manifest lists it); pack the dataset again with tritonsagan-prepare"
            )
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as err:  # numpy refuses a file shorter than its header says
            raise DataError(
                f"{path}: truncated or damaged shard ({err}); pack the dataset again with tritonsagan-prepare"
            ) from None
        if array.shape != shape or array.dtype != dtype:
            raise DataError(f"{path}: holds {array.dtype} {array.shape}, the manifest says {np.dtype(dtype)} {shape}")
        arrays.append(array)
    return arrays[0], arrays[1]


class PackedDataset(ImageStream):
    """A finished packed dataset as an endless stream: sample i is image order_e[i mod n] of epoch
    e = i // n, flipped left-right when the (seed, i) coin says so; uint8 (3, size, size) at the
    manifest's size, which must be `image_size`: the model's."""

    def __init__(
        self, root: str | os.PathLike, seed: int, conditional: bool = False, image_size: int = IMAGE_SIZE
    ) -> None:
        self.root = Path(root)
        self.name = str(self.root)
        manifest = read_manifest(self.root)
        if manifest["image_size"] != image_size:
            raise DataError(
                f"{self.root}: packed at {manifest['image_size']}x{manifest['image_size']}, the model is {image_size}x{image_size}; "
                f"train with --image-size {manifest['image_size']}, or pack the images again with tritonsagan-prepare --image-size {image_size}"
            )
        self.image_size = image_size
        if not manifest["complete"]:
            raise DataError(
                f"{self.root}: packing was interrupted ({len(manifest['shards'])} shards written); run tritonsagan-prepare again to finish it"
            )
        if conditional and not manifest["conditional"]:
            raise DataError(
                f"{self.root}: packed without --conditional, so it has no classes; pack it with --conditional or train without"
            )
        self.classes = list(manifest["classes"]) if conditional else []
        self.shards = manifest["shards"]
        labels = [open_shard(self.root, shard, image_size)[1] for shard in self.shards]  # checks every shard up front
        self.labels = np.concatenate(labels) if labels else np.empty(0, np.int64)
        self.offsets = np.cumsum([0] + [shard["count"] for shard in self.shards])
        if len(self.labels) == 0:
            raise DataError(f"{self.root}: the packed dataset holds no images")
        if len(self.labels) != manifest["count"]:
            raise DataError(
                f"{self.root}: the shards hold {len(self.labels)} images, the manifest says {manifest['count']}; pack it again"
            )
        if conditional:
            self._check_classes()
        self.seed = seed
        self.order = epoch_order(seed, len(self.labels))
        self.flips = epoch_flips(seed, len(self.labels))
        self._images: list[np.ndarray] | None = None  # memory maps, opened lazily in each worker

    def _check_classes(self) -> None:
        """Every label names a class of the manifest, and every class has images (else its G would learn nothing)."""
        if self.labels.min() < 0 or self.labels.max() >= len(self.classes):
            raise DataError(
                f"{self.root}: the shards hold labels {self.labels.min()}..{self.labels.max()}, "
                f"the manifest lists {len(self.classes)} classes; pack it again"
            )
        empty = [
            name
            for name, count in zip(self.classes, np.bincount(self.labels, minlength=len(self.classes)))
            if count == 0
        ]
        if empty:
            raise DataError(
                f"{self.root}: {len(empty)} class(es) of the manifest have no images: {', '.join(empty[:LISTED_NAMES])}; pack it again"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        if self._images is None:
            self._images = [open_shard(self.root, shard, self.image_size)[0] for shard in self.shards]
        epoch, position = divmod(index, len(self.labels))
        item = int(self.order(epoch)[position])
        shard = int(np.searchsorted(self.offsets, item, side="right")) - 1
        image = self._images[shard][item - self.offsets[shard]]
        if self.flips(epoch)[position]:
            image = image[:, :, ::-1]
        return torch.from_numpy(np.array(image)), int(self.labels[item]), 0  # a copy: the map is read-only
