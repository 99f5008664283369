"""Training data sources: an image folder and the built-in offline photo stream (a packed dataset is
in tritonsagan.packed; tritonsagan.loader picks one and batches it), each an endless deterministic
stream of uint8 (3, image_size, image_size) images that keeps the `ImageStream` contract.

Every sample is a pure function of (seed, global sample index): which image, the crop and the flip.
So a run resumed at step k reads exactly the samples the uninterrupted run would have read, with
any number of DataLoader workers and on any number of ranks. Sample i of a finite dataset of n items
is item order_e[i mod n] of epoch e = i // n, where order_e is a fresh permutation per epoch; each
worker computes it once per epoch (`EpochOrder`), so a sample costs the same for 100 files as for
a million. Batches stay uint8 until they are on the device (`images.from_uint8`): a quarter of the
bytes of float32 to move.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from tritonsagan.models.config import IMAGE_SIZE

from .errors import TritonsaganError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}

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


class DataError(TritonsaganError, ValueError):
    """The training data cannot be used (missing, empty, too small)."""


# Pillow's modes of 16-bit grayscale (PNG and TIFF open as one of these); Pillow's own conversion to RGB
# clips them at 255, which turns nearly every pixel white. 32-bit "I" images are read as 16-bit too.
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
SIXTEEN_TO_EIGHT_BITS = 257  # 65535 / 255


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette and alpha images become RGB; transparency is composited onto white; 16-bit
    grayscale is scaled to 8 bits (16-bit RGB needs nothing: Pillow reads it as 8-bit RGB)."""
    if image.mode in SIXTEEN_BIT_MODES:
        eight_bits = np.clip(np.round(np.asarray(image, dtype=np.float64) / SIXTEEN_TO_EIGHT_BITS), 0, 255).astype(
            np.uint8
        )
        return Image.fromarray(eight_bits).convert("RGB")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


UNREADABLE = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageLimits:
    """Which source images are used: one much smaller than 128 px would be upscaled into a blur, one of
    extreme aspect ratio cropped to a sliver of itself; both are skipped and counted, like unreadable files."""

    min_side: int = 32  # px: a quarter of the training size
    max_aspect_ratio: float = 4.0  # longer side / shorter side

    def __post_init__(self) -> None:
        if not self.min_side >= 1 or not self.max_aspect_ratio >= 1:  # `not >=` also refuses NaN
            raise DataError(
                f"--min-image-side must be >= 1 and --max-aspect-ratio >= 1, got {self.min_side} and {self.max_aspect_ratio}"
            )

    def problem(self, size: tuple[int, int]) -> str | None:
        """Why an image of this (width, height) is not used, or None."""
        width, height = size
        if min(size) < self.min_side:
            return f"{width}x{height} px, shorter side below {self.min_side}"
        if max(size) > self.max_aspect_ratio * min(size):
            return f"{width}x{height} px, aspect ratio above {self.max_aspect_ratio:g}"
        return None


class SkippedImage(Exception):
    """A source file that is not used, and why: unreadable, or outside the ImageLimits."""


def load_usable(path: Path, limits: ImageLimits) -> Image.Image:
    """The RGB image of `path`, or SkippedImage saying why it is not used."""
    try:
        image = load_rgb(path)
    except UNREADABLE as err:
        raise SkippedImage(f"unreadable ({type(err).__name__})") from None
    if problem := limits.problem(image.size):
        raise SkippedImage(problem)
    return image


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> uint8 (3, H, W)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


# The last word of each random stream's seed: a sample's crop and flip never share numbers with an
# epoch's permutation, even where a sample index equals an epoch number.
SAMPLE_STREAM = 0
EPOCH_ORDER_STREAM = 7


def _sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, SAMPLE_STREAM])


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


class EpochOrder:
    """The permutation of n items for each epoch, a pure function of (seed, epoch), computed once per
    epoch and kept (each DataLoader worker keeps its own)."""

    def __init__(self, seed: int, n: int) -> None:
        self.seed, self.n = seed, n
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def __call__(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._order = (
                epoch,
                np.random.default_rng([self.seed, epoch, EPOCH_ORDER_STREAM]).permutation(self.n),
            )
        return self._order


def short_side_crop(image: Image.Image, size: int, rng: np.random.Generator | None = None) -> Image.Image:
    """Resize (bicubic) so the shorter side is `size`, keeping the aspect ratio, then crop size x size:
    at a position drawn from `rng`, or the centre without one."""
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    spare_x, spare_y = image.size[0] - size, image.size[1] - size
    if rng is None:
        left, top = spare_x // 2, spare_y // 2
    else:
        left, top = int(rng.integers(spare_x + 1)), int(rng.integers(spare_y + 1))
    return image.crop((left, top, left + size, top + size))


def center_square(image: Image.Image, size: int) -> Image.Image:
    """The central square of side min(width, height), resized (bicubic) to size x size."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.resize(
        (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side), reducing_gap=3.0
    )


def resize_and_crop(image: Image.Image, size: int, rng: np.random.Generator, random_crop: bool) -> Image.Image:
    """`short_side_crop` (random or centre), flipped half of the time."""
    image = short_side_crop(image, size, rng if random_crop else None)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


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
        self.order = EpochOrder(seed, len(files))

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
        rng = _sample_rng(self.seed, index)
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
        rng = _sample_rng(self.seed, index)
        label = int(rng.integers(len(self._photos)))
        photo = self._photos[label]
        size = self.image_size
        side = int(rng.integers(size, min(photo.size) + 1))
        left, top = int(rng.integers(photo.size[0] - side + 1)), int(rng.integers(photo.size[1] - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_uint8_tensor(crop), label, 0
