"""Packed datasets: an image folder decoded, cropped and resized once into uint8 shards (128x128 by
default, or --image-size 32, 64, 256), for a model of that size.

    tritonsagan-prepare /data/imagenet/train /data/imagenet128 --conditional --workers 16
    tritonsagan-train --data /data/imagenet128 --conditional ...

Layout of DEST (memory-mappable, no pickle):
- `images_00000.npy` ...: uint8 (count, 3, size, size) per shard, one shard per SHARD_FILES source
  files (4096 images: 201 MB at 128), usable images only;
- `labels_00000.npy` ...: int64 (count,) class indices (0 without --conditional);
- `manifest.json`: the format, the image size, the source and settings, the class names, per shard its files, count
  and the source files skipped with why (unreadable, or outside the size limits), the files whose names
  are not UTF-8 (left out), and whether packing is complete.
Each shard is written atomically and the manifest after it, so an interrupted `tritonsagan-prepare`
resumes at the first shard it had not finished. Training reads a packed dataset memory-mapped, with a
random horizontal flip per sample (nothing is decoded), with the streams' guarantees (tritonsagan.data).

Like BigGAN-PyTorch's make_hdf5.py (uint8 ImageNet at 128x128 once) without HDF5, and like
StyleGAN2-ADA's dataset_tool without PNG decoding at training time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from tritonsagan.models.config import IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZES, check_image_size

from .atomic_write import atomic_write_bytes, atomic_write_json
from .cli import run_command
from .data import (
    LISTED_NAMES,
    DataError,
    EpochOrder,
    ImageFolderStream,
    ImageLimits,
    ImageStream,
    SkippedImage,
    center_square,
    load_usable,
    short_side_crop,
)

FORMAT = "tritonsagan-packed"
VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_FILES = 4096
CROPS = ("center", "short-side")
# The manifest entries that say what was packed: a resume must find them unchanged.
IDENTITY = (
    "format",
    "version",
    "image_size",
    "source",
    "conditional",
    "crop",
    "min_image_side",
    "max_aspect_ratio",
    "classes",
    "files",
    "files_sha256",
    "shard_files",
)
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


def _shard_names(index: int) -> tuple[str, str]:
    return f"images_{index:05d}.npy", f"labels_{index:05d}.npy"


def _image_shape(size: int) -> tuple[int, int, int]:
    return (IMAGE_CHANNELS, size, size)


def _open_shard(root: Path, shard: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The shard's images (memory-mapped) and labels, checked against the manifest (images of `size`)."""
    arrays = []
    for key, shape, dtype in (
        ("images", (shard["count"], *_image_shape(size)), np.uint8),
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


def _flip(seed: int, index: int) -> bool:
    """A fair coin per (seed, sample index): the low bit of a splitmix64 hash (cheap, stateless)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return bool((z ^ (z >> 31)) & 1)


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
        labels = [_open_shard(self.root, shard, image_size)[1] for shard in self.shards]  # checks every shard up front
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
        self.order = EpochOrder(seed, len(self.labels))
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
            self._images = [_open_shard(self.root, shard, self.image_size)[0] for shard in self.shards]
        epoch, position = divmod(index, len(self.labels))
        item = int(self.order(epoch)[position])
        shard = int(np.searchsorted(self.offsets, item, side="right")) - 1
        image = self._images[shard][item - self.offsets[shard]]
        if _flip(self.seed, index):
            image = image[:, :, ::-1]
        return torch.from_numpy(np.array(image)), int(self.labels[item]), 0  # a copy: the map is read-only


# ---- packing ------------------------------------------------------------------------------------------


def _decode(job: tuple[str, str, ImageLimits, int]) -> np.ndarray | str:
    """One source file -> uint8 (3, size, size), or why it is skipped."""
    path, crop, limits, size = job
    try:
        image = load_usable(Path(path), limits)
    except SkippedImage as skipped:
        return str(skipped)
    image = center_square(image, size) if crop == "center" else short_side_crop(image, size)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _expected_manifest(source: ImageFolderStream, conditional: bool, crop: str) -> dict:
    listing = "".join(f"{path.relative_to(source.root).as_posix()}\t{label}\n" for path, label in source.files)
    size = source.image_size
    return {
        "format": FORMAT,
        "version": VERSION,
        "image_size": size,
        "layout": f"uint8 (count, 3, {size}, {size}) per shard",
        "source": str(source.root.resolve()),
        "conditional": conditional,
        "crop": crop,
        "min_image_side": source.limits.min_side,
        "max_aspect_ratio": source.limits.max_aspect_ratio,
        "classes": source.classes,
        "files": len(source.files),
        "files_sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "shard_files": SHARD_FILES,
        "undecodable_names": source.undecodable_names,
    }


def _finished_shards(dest: Path, expected: dict) -> list[dict]:
    """The shards an earlier run of the same packing finished (and that are intact); [] for a new DEST."""
    if not dest.exists():
        return []
    if not dest.is_dir():
        raise DataError(f"{dest} exists and is a file, not a packed dataset folder")
    if not (dest / MANIFEST_NAME).is_file():
        if any(dest.iterdir()):
            raise DataError(
                f"{dest} exists, is not empty and is not a packed dataset (no {MANIFEST_NAME}); choose a new or empty DEST"
            )
        return []
    manifest = read_manifest(dest)
    changed = [key for key in IDENTITY if manifest.get(key) != expected[key]]
    if changed:
        raise DataError(
            f"{dest} holds a packed dataset of {manifest.get('source')} that differs in {', '.join(changed)}; "
            "choose another DEST (or delete it to pack again)"
        )
    finished = []
    for shard in manifest["shards"]:
        try:
            _open_shard(dest, shard, manifest["image_size"])
        except DataError:
            break  # repack from the first damaged shard on
        finished.append(shard)
    return finished


def prepare(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    conditional: bool = False,
    workers: int = 1,
    crop: str = "center",
    progress: bool = True,
    limits: ImageLimits = ImageLimits(),
    image_size: int = IMAGE_SIZE,
) -> dict:
    """Pack every usable image under src into dest at image_size x image_size (resuming an interrupted
    packing); the manifest."""
    if crop not in CROPS:
        raise DataError(f"--crop must be one of {', '.join(CROPS)}, got {crop!r}")
    check_image_size("--image-size", image_size)
    source = ImageFolderStream(
        src, seed=0, conditional=conditional, limits=limits, image_size=image_size
    )  # the file list, classes, and their checks
    dest = Path(dest)
    manifest = _expected_manifest(source, conditional, crop)
    shards = _finished_shards(dest, manifest)
    total_shards = -(-len(source.files) // SHARD_FILES)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("packing"), MofNCompleteColumn(), BarColumn(), TimeRemainingColumn(), disable=not progress
    )
    task = bar.add_task("files", total=len(source.files), completed=min(len(shards) * SHARD_FILES, len(source.files)))
    pool = concurrent.futures.ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        with bar:
            for index in range(len(shards), total_shards):
                files = source.files[index * SHARD_FILES : (index + 1) * SHARD_FILES]
                jobs = [(str(path), crop, limits, image_size) for path, _ in files]
                decoded = pool.map(_decode, jobs, chunksize=32) if pool else map(_decode, jobs)
                images, labels, skipped = [], [], {}
                for (path, label), image in zip(files, decoded):
                    if isinstance(image, str):
                        skipped[path.relative_to(source.root).as_posix()] = image
                    else:
                        images.append(image)
                        labels.append(label)
                    bar.advance(task)
                images_name, labels_name = _shard_names(index)
                stacked = np.stack(images) if images else np.empty((0, *_image_shape(image_size)), np.uint8)
                atomic_write_bytes(dest / images_name, _npy_bytes(stacked))
                atomic_write_bytes(dest / labels_name, _npy_bytes(np.asarray(labels, dtype=np.int64)))
                shards.append(
                    {
                        "images": images_name,
                        "labels": labels_name,
                        "count": len(images),
                        "first_file": index * SHARD_FILES,
                        "skipped": skipped,
                    }
                )
                _write_manifest(dest, manifest, shards, complete=index == total_shards - 1)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    final = read_manifest(dest)
    if final["count"] == 0:
        raise DataError(
            f"{src}: none of the {len(source.files)} image files is usable (see the reasons in {dest / MANIFEST_NAME})"
        )
    return final


def _write_manifest(dest: Path, manifest: dict, shards: list[dict], complete: bool) -> None:
    counts = {"count": sum(s["count"] for s in shards), "skipped_files": sum(len(s["skipped"]) for s in shards)}
    atomic_write_json(dest / MANIFEST_NAME, {**manifest, **counts, "shards": shards, "complete": complete})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritonsagan-prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="image folder (with --conditional: one sub-folder per class)")
    parser.add_argument(
        "dest", help="folder for the packed dataset (new, empty, or an interrupted packing of the same SRC to resume)"
    )
    parser.add_argument("--conditional", action="store_true", help="sub-folders of SRC are classes")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (default: one per CPU)"
    )
    parser.add_argument(
        "--min-image-side",
        type=int,
        default=ImageLimits.min_side,
        help=f"skip images whose shorter side is below this many px (default: {ImageLimits.min_side})",
    )
    parser.add_argument(
        "--max-aspect-ratio",
        type=float,
        default=ImageLimits.max_aspect_ratio,
        help=f"skip images whose longer side exceeds this many times the shorter (default: {ImageLimits.max_aspect_ratio:g})",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=IMAGE_SIZE,
        help=f"side of the packed images, the --image-size of the models it trains: {', '.join(map(str, IMAGE_SIZES))} (default: {IMAGE_SIZE})",
    )
    parser.add_argument(
        "--crop",
        choices=CROPS,
        default="center",
        help="center: the central square, resized to --image-size (BigGAN's make_hdf5); short-side: the shorter side "
        "resized to --image-size, then the central square (default: center)",
    )
    return parser


def _run(args: argparse.Namespace) -> str:
    limits = ImageLimits(args.min_image_side, args.max_aspect_ratio)
    manifest = prepare(
        args.src,
        args.dest,
        args.conditional,
        max(1, args.workers),
        args.crop,
        sys.stderr.isatty(),
        limits,
        args.image_size,
    )
    classes = f" in {len(manifest['classes'])} classes" if manifest["conditional"] else ""
    skipped = f"{manifest['skipped_files']} files skipped (unreadable, too small or too elongated)"
    if manifest["undecodable_names"]:
        skipped += f" and {len(manifest['undecodable_names'])} left out (names not UTF-8)"
    return f"packed {manifest['count']} {args.image_size}x{args.image_size} images{classes} into {args.dest} ({skipped}, listed in {MANIFEST_NAME})"


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
