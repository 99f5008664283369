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
random horizontal flip per sample (nothing is decoded), with the streams' guarantees
(tritonsagan.data.stream); tritonsagan.data.packed_reader reads it.

Like BigGAN-PyTorch's make_hdf5.py (uint8 ImageNet at 128x128 once) without HDF5, and like
StyleGAN2-ADA's dataset_tool without PNG decoding at training time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import hashlib
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tritonsagan.models.config import IMAGE_SIZE, IMAGE_SIZES, check_image_size

from ..atomic_write import atomic_write_bytes, atomic_write_json
from ..cli import run_command
from ..config_flags import REQUIRED, add_config_argument, add_config_flags, build_config, config_field
from ..shared_fields import max_aspect_ratio_field, min_image_side_field
from .decode import (
    ImageLimits,
    SkippedImage,
    center_square,
    load_usable,
    short_side_crop,
)
from .folder import ImageFolderStream
from .packed_reader import (
    FORMAT,
    MANIFEST_NAME,
    VERSION,
    image_shape,
    open_shard,
    read_manifest,
    shard_names,
)
from .stream import DataError

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
            open_shard(dest, shard, manifest["image_size"])
        except DataError:
            break  # repack from the first damaged shard on
        finished.append(shard)
    return finished


@dataclass(kw_only=True)
class PrepareConfig:
    """tritonsagan-prepare's settings."""

    src: str = config_field(REQUIRED, "image folder (with --conditional: one sub-folder per class)", positional=True)
    dest: str = config_field(
        REQUIRED,
        "folder for the packed dataset (new, empty, or an interrupted packing of the same SRC to resume)",
        positional=True,
    )
    conditional: bool = config_field(False, "sub-folders of SRC are classes")
    workers: int = config_field(os.cpu_count() or 1, "decoding processes (default: one per CPU)")
    min_image_side: int = min_image_side_field()
    max_aspect_ratio: float = max_aspect_ratio_field()
    image_size: int = config_field(
        IMAGE_SIZE,
        f"side of the packed images, the --image-size of the models it trains: {', '.join(map(str, IMAGE_SIZES))}",
    )
    crop: str = config_field(
        "center",
        "center: the central square, resized to --image-size (BigGAN's make_hdf5); short-side: the shorter side "
        "resized to --image-size, then the central square",
        choices=CROPS,
    )

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.min_image_side, self.max_aspect_ratio)


def prepare(cfg: PrepareConfig, progress: bool = True) -> dict:
    """Pack every usable image under cfg.src into cfg.dest at cfg.image_size (resuming an interrupted
    packing); the manifest."""
    if cfg.crop not in CROPS:
        raise DataError(f"--crop must be one of {', '.join(CROPS)}, got {cfg.crop!r}")
    check_image_size("--image-size", cfg.image_size)
    # The file list, the classes, and their checks.
    source = ImageFolderStream(
        cfg.src, seed=0, conditional=cfg.conditional, limits=cfg.image_limits, image_size=cfg.image_size
    )
    dest = Path(cfg.dest)
    manifest = _expected_manifest(source, cfg.conditional, cfg.crop)
    shards = _finished_shards(dest, manifest)
    total_shards = -(-len(source.files) // SHARD_FILES)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("packing"), MofNCompleteColumn(), BarColumn(), TimeRemainingColumn(), disable=not progress
    )
    task = bar.add_task("files", total=len(source.files), completed=min(len(shards) * SHARD_FILES, len(source.files)))
    workers = max(1, cfg.workers)
    pool = concurrent.futures.ProcessPoolExecutor(workers) if workers > 1 else None
    decode = functools.partial(pool.map, chunksize=32) if pool else map
    try:
        with bar:
            for index in range(len(shards), total_shards):
                shards.append(_pack_shard(cfg, source, index, decode, lambda: bar.advance(task)))
                _write_manifest(dest, manifest, shards, complete=index == total_shards - 1)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    final = read_manifest(dest)
    if final["count"] == 0:
        raise DataError(
            f"{cfg.src}: none of the {len(source.files)} image files is usable (see the reasons in {dest / MANIFEST_NAME})"
        )
    return final


def _pack_shard(
    cfg: PrepareConfig, source: ImageFolderStream, index: int, decode: Callable, advance: Callable[[], None]
) -> dict:
    """Shard `index`: its files decoded (by `decode`, a map), written atomically; its manifest entry."""
    files = source.files[index * SHARD_FILES : (index + 1) * SHARD_FILES]
    jobs = [(str(path), cfg.crop, cfg.image_limits, cfg.image_size) for path, _ in files]
    images, labels, skipped = [], [], {}
    for (path, label), image in zip(files, decode(_decode, jobs)):
        if isinstance(image, str):
            skipped[path.relative_to(source.root).as_posix()] = image
        else:
            images.append(image)
            labels.append(label)
        advance()
    images_name, labels_name = shard_names(index)
    stacked = np.stack(images) if images else np.empty((0, *image_shape(cfg.image_size)), np.uint8)
    atomic_write_bytes(Path(cfg.dest) / images_name, _npy_bytes(stacked))
    atomic_write_bytes(Path(cfg.dest) / labels_name, _npy_bytes(np.asarray(labels, dtype=np.int64)))
    first_file = index * SHARD_FILES
    return {
        "images": images_name,
        "labels": labels_name,
        "count": len(images),
        "first_file": first_file,
        "skipped": skipped,
    }


def _write_manifest(dest: Path, manifest: dict, shards: list[dict], complete: bool) -> None:
    counts = {"count": sum(s["count"] for s in shards), "skipped_files": sum(len(s["skipped"]) for s in shards)}
    atomic_write_json(dest / MANIFEST_NAME, {**manifest, **counts, "shards": shards, "complete": complete})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritonsagan-prepare", description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    add_config_flags(parser, PrepareConfig)
    return parser


def run_prepare(cfg: PrepareConfig) -> str:
    """tritonsagan-prepare: pack, and say what was packed in a line."""
    manifest = prepare(cfg, sys.stderr.isatty())
    classes = f" in {len(manifest['classes'])} classes" if manifest["conditional"] else ""
    skipped = f"{manifest['skipped_files']} files skipped (unreadable, too small or too elongated)"
    if manifest["undecodable_names"]:
        skipped += f" and {len(manifest['undecodable_names'])} left out (names not UTF-8)"
    size = cfg.image_size
    return f"packed {manifest['count']} {size}x{size} images{classes} into {cfg.dest} ({skipped}, listed in {MANIFEST_NAME})"


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), lambda args: run_prepare(build_config(PrepareConfig, args)), argv)


if __name__ == "__main__":
    sys.exit(main())
