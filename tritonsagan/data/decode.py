"""Source images to uint8 tensors: decoding to RGB, which images are usable (`ImageLimits`), and
the crops and resizes of the streams and the packer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .stream import DataError

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
