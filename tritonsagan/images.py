"""Image tensors to image files (Pillow and numpy only)."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .atomic_write import atomic_write_bytes


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) floats in [-1, 1] -> uint8 (B, 3, H, W) on the CPU."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1], on their device (batches travel as uint8, convert there)."""
    return images.float().div_(127.5).sub_(1.0)


def make_grid(images: torch.Tensor, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """uint8 (B, 3, H, W) -> one HWC uint8 array, `columns` images per row (default: a square)."""
    count, _, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding, 3), np.uint8)
    for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        top, left = padding + (i // columns) * (height + padding), padding + (i % columns) * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


TITLE_HEIGHT = 16  # pixels above each grid of side_by_side for its title
PANEL_GAP = 8


def side_by_side(grids: list[np.ndarray], titles: list[str]) -> np.ndarray:
    """HWC uint8 grids in one row, each under its title (white on black), tops aligned."""
    if len(grids) != len(titles):
        raise ValueError(f"{len(grids)} grids but {len(titles)} titles")
    height = TITLE_HEIGHT + max(grid.shape[0] for grid in grids)
    width = sum(grid.shape[1] for grid in grids) + PANEL_GAP * (len(grids) - 1)
    canvas = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(canvas)
    left = 0
    for grid, title in zip(grids, titles):
        canvas.paste(Image.fromarray(grid), (left, TITLE_HEIGHT))
        draw.text((left + 2, 2), title, fill=(255, 255, 255))
        left += grid.shape[1] + PANEL_GAP
    return np.asarray(canvas)


# The formats images are written in, by file extension: lossless except JPEG (quality 95).
IMAGE_FORMATS = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 95}),
    ".jpeg": ("JPEG", {"quality": 95}),
    ".webp": ("WEBP", {"lossless": True}),
}


def image_format(path: str | os.PathLike) -> tuple[str, dict]:
    """The Pillow format and options for a file name's extension; a ValueError for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(
            f"{path}: cannot tell the image format from {suffix or 'no extension'}; name it {', '.join(IMAGE_FORMATS)}"
        )
    return IMAGE_FORMATS[suffix]


def save_image(array: np.ndarray, path: str | os.PathLike) -> None:
    """An HWC uint8 array as an image file, in the format its extension names (written atomically)."""
    fmt, options = image_format(path)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    atomic_write_bytes(path, buffer.getvalue())
