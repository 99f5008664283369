"""The data path: samples/s of the image-folder stream (100 and 200,000 files), of a packed dataset,
and of the whole DataLoader with workers, as training reads them (uint8 128x128, flips included).

The large folder is 200,000 links to one JPEG, so it is cheap to build and every sample decodes the
same file: what grows with the folder is only the bookkeeping per sample, which must not.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from rich.table import Table

from tritonsagan.data import make_loader
from tritonsagan.data.builtin import builtin_photo_dir
from tritonsagan.data.folder import ImageFolderStream
from tritonsagan.data.packed_reader import PackedDataset
from tritonsagan.data.packed_writer import PrepareConfig, prepare

from .cells import number, table

FOLDER_SIZES = (100, 200_000)
PACKED_IMAGES = 1024
LOADER_BATCH = 256
PACKED = "packed"  # the loader rows' source name of the packed dataset


def _link_folder(root: Path, image: Path, count: int) -> Path:
    root.mkdir(parents=True)
    for i in range(count):
        os.symlink(image, root / f"{i:06d}.jpg")
    return root


def _per_sample_ms(dataset, samples: int) -> float:
    """Mean wall time of dataset[i] over consecutive indices from 0 (the epoch's permutation included)."""
    dataset[0]  # warm-up: file-system caches, lazy opening
    start = time.perf_counter()
    for index in range(samples):
        dataset[index]
    return (time.perf_counter() - start) / samples * 1e3


def _loader_images_per_s(dataset, workers: int, batches: int) -> float:
    stream = iter(make_loader(dataset, LOADER_BATCH, 0, workers))
    next(stream)  # workers started and warm
    start = time.perf_counter()
    for _ in range(batches):
        images, _, _ = next(stream)
    assert images.dtype == torch.uint8
    return batches * LOADER_BATCH / (time.perf_counter() - start)


def run(quick: bool = False) -> dict:
    samples = 100 if quick else 400
    batches = 10 if quick else 40
    worker_counts = sorted({0, min(4, os.cpu_count() or 1)})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photo = tmp / "chelsea.jpg"  # a real photo, 451x300, as a JPEG
        Image.open(builtin_photo_dir() / "chelsea.png").convert("RGB").save(photo, quality=90)
        folder_rows, folders = [], {}
        for count in FOLDER_SIZES:
            folders[count] = ImageFolderStream(_link_folder(tmp / f"links_{count}", photo, count), seed=0)
            folder_rows.append({"files": count, "ms_per_sample": _per_sample_ms(folders[count], samples)})
        source = _link_folder(tmp / "to_pack", photo, PACKED_IMAGES)
        prepare(PrepareConfig(src=source, dest=tmp / "packed", workers=min(4, os.cpu_count() or 1)), progress=False)
        packed = PackedDataset(tmp / "packed", seed=0)
        loader_rows = [
            {
                "source": PACKED,
                "workers": w,
                "batch": LOADER_BATCH,
                "images_per_s": _loader_images_per_s(packed, w, batches),
            }
            for w in worker_counts
        ]
        largest = FOLDER_SIZES[-1]
        loader_rows += [
            {
                "source": f"folder ({largest} files)",
                "workers": w,
                "batch": LOADER_BATCH,
                "images_per_s": _loader_images_per_s(folders[largest], w, max(2, batches // 10)),
            }
            for w in worker_counts
        ]
        return {
            "folder": folder_rows,
            "packed": {"images": PACKED_IMAGES, "ms_per_sample": _per_sample_ms(packed, samples * 10)},
            "loader": loader_rows,
        }


def results_tables(section: dict) -> list[Table]:
    samples = table(
        "Data: per-sample cost (uint8 128x128, as training reads it)", ("source", "ms per sample", "samples/s")
    )
    for r in section["folder"]:
        samples.add_row(
            f"image folder, {r['files']} files", number(r["ms_per_sample"]), number(1e3 / r["ms_per_sample"])
        )
    packed = section["packed"]
    samples.add_row(
        f"packed, {packed['images']} images", number(packed["ms_per_sample"]), number(1e3 / packed["ms_per_sample"])
    )
    loader = table(
        "Data: whole DataLoader (batches of uint8 images, flips included)", ("source", "workers", "batch", "images/s")
    )
    for r in section["loader"]:
        loader.add_row(r["source"], str(r["workers"]), str(r["batch"]), number(r["images_per_s"]))
    return [samples, loader]


def best_packed_images_per_s(section: dict) -> float | None:
    return max((r["images_per_s"] for r in section["loader"] if r["source"] == PACKED), default=None)


SUMMARY_HEADER = "data: folder stream ms/sample, 100 / 200,000 files; packed loader images/s"


def summary_cell(section: dict | None) -> str:
    """ms per sample of the folder stream (smallest / largest folder); best packed loader images/s."""
    if not section:
        return "-"
    folder = sorted(section["folder"], key=lambda r: r["files"])
    return f"{number(folder[0]['ms_per_sample'])} / {number(folder[-1]['ms_per_sample'])}; {number(best_packed_images_per_s(section), 'n/a')}"
