"""An image folder as an endless deterministic stream (class sub-folders with --conditional)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from tritonsagan.models.config import IMAGE_SIZE

from ..seeding import stream_rng
from .decode import (
    ImageLimits,
    SkippedImage,
    load_usable,
    resize_and_crop,
    to_uint8_tensor,
)
from .stream import SAMPLE_STREAM, DataError, ImageStream, epoch_order

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}


class ImageFolderStream(ImageStream):
    """Images under `root`, found recursively; with `conditional`, each sub-folder of root is a class.

    Item i is sample i of an endless stream: epoch i // n in a fresh permutation. A file that is not
    used (unreadable, or outside `limits`) is skipped (the next one in the permutation is used) and
    counted in the item's `skipped`. Files whose names are not valid UTF-8 are left out and listed in
    `undecodable_names` (they could not be named in a manifest or a message).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        seed: int,
        conditional: bool = False,
        random_crop: bool = True,
        limits: ImageLimits = ImageLimits(),
        image_size: int = IMAGE_SIZE,
    ) -> None:
        self.root = Path(root)
        self.name = str(self.root)
        self.image_size = image_size
        if not self.root.is_dir():
            raise DataError(f"data folder not found: {self.root}")
        self.seed, self.random_crop, self.limits = seed, random_crop, limits
        self.undecodable_names: list[str] = []
        if conditional:
            class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir())
            if not class_dirs:
                raise DataError(f"{self.root}: --conditional needs one sub-folder per class, found none")
            self.classes = [p.name for p in class_dirs]
            per_class = [self._image_files(d) for d in class_dirs]
            unusable = [
                f"{d.name} ({_unusable(found)})"
                for d, found in zip(class_dirs, per_class)
                if not _has_usable_image(found, limits)
            ]
            if unusable:
                folders = f"{len(unusable)} class folder{'s' if len(unusable) > 1 else ''}"
                raise DataError(f"{self.root}: no usable image in {folders}: {', '.join(unusable)}{_LIMITS_HINT}")
            files = [(f, label) for label, found in enumerate(per_class) for f in found]
        else:
            self.classes = []
            files = [(f, 0) for f in self._image_files(self.root)]
            if not files:
                raise DataError(f"{self.root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
            if not _has_usable_image([f for f, _ in files], limits):
                raise DataError(f"{self.root}: none of the {len(files)} image files is usable{_LIMITS_HINT}")
        if self.undecodable_names:
            print(
                f"warning: {self.root}: left out {len(self.undecodable_names)} file(s) whose names are not valid UTF-8 "
                f"(rename them to use them): {', '.join(self.undecodable_names[:LISTED_NAMES])}",
                file=sys.stderr,
            )
        self.files = files
        self.order = epoch_order(seed, len(files))

    def _image_files(self, directory: Path) -> list[Path]:
        """The image files under `directory`, sorted; names that are not UTF-8 go to undecodable_names."""
        found = []
        for path in sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
            name = path.relative_to(self.root).as_posix()
            if _is_utf8(name):
                found.append(path)
            else:
                self.undecodable_names.append(os.fsencode(name).decode("utf-8", "backslashreplace"))
        return found

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        n = len(self.files)
        epoch, position = divmod(index, n)
        order = self.order(epoch)
        rng = stream_rng(self.seed, index, SAMPLE_STREAM)
        for skipped in range(n):
            path, label = self.files[order[(position + skipped) % n]]
            try:
                image = load_usable(path, self.limits)
            except SkippedImage:
                continue
            return to_uint8_tensor(resize_and_crop(image, self.image_size, rng, self.random_crop)), label, skipped
        raise DataError(f"{self.root}: none of the {n} image files is usable{_LIMITS_HINT}")


LISTED_NAMES = 5  # how many file names a warning shows


_LIMITS_HINT = "; a usable image is readable and within --min-image-side and --max-aspect-ratio"


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")  # a name that was not UTF-8 on disk holds surrogate escapes, which do not encode
        return True
    except UnicodeEncodeError:
        return False


def _has_usable_image(files: list[Path], limits: ImageLimits) -> bool:
    """Whether any file is usable, trying them in order (usually the first one is)."""
    for path in files:
        try:
            load_usable(path, limits)
            return True
        except SkippedImage:
            continue
    return False


def _unusable(files: list[Path]) -> str:
    if not files:
        return "no image files"
    return f"{len(files)} image file{'s' if len(files) > 1 else ''}, none usable"
