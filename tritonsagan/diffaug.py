"""Differentiable Augmentation (Zhao et al., NeurIPS 2020; mit-han-lab/data-efficient-gans).

Every image the discriminator sees, real or generated, in the D step and in the G step, goes through
the same kind of random augmentation; it is differentiable, so G's gradient flows through it. The
policy is a comma list of
- `color`: brightness + U(-0.5, 0.5); saturation x U(0, 2) around each pixel's channel mean;
  contrast x U(0.5, 1.5) around the image mean (in that order, the paper's ranges);
- `translation`: a shift by up to 1/8 of the image size along each axis, zero fill;
- `cutout`: a square of half the image size, at a random centre, set to zero.

The random draws are made apart from the augmentation (`draw`, from a seeded torch.Generator,
per image), so the augmentation itself (`augment`) is a pure function of the images
and the draws: batched tensor operations with no Python loop over images, no graph break under
torch.compile, fine under bf16 autocast, and a resumed run draws exactly what the first one did.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

POLICIES = ("color", "translation", "cutout")
TRANSLATION_RATIO = 1 / 8
CUTOUT_RATIO = 1 / 2


def parse_policy(text: str) -> tuple[str, ...]:
    """ "color,translation" -> ("color", "translation"); "" -> () (no augmentation)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise ConfigError(
            f"--diffaug: unknown augmentation {', '.join(map(repr, unknown))}; allowed: {', '.join(POLICIES)} (comma-separated, empty for none)"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"--diffaug: {text!r} names an augmentation twice")
    return names


def _shift(size: int, ratio: float) -> int:
    return int(size * ratio + 0.5)


def draw(policy: tuple[str, ...], batch: int, size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The random parameters of one augmentation of `batch` square images of side `size` (on the generator's device)."""
    params: dict[str, torch.Tensor] = {}
    device = generator.device
    if "color" in policy:
        params["brightness"] = torch.rand(batch, generator=generator, device=device) - 0.5
        params["saturation"] = torch.rand(batch, generator=generator, device=device) * 2
        params["contrast"] = torch.rand(batch, generator=generator, device=device) + 0.5
    if "translation" in policy:
        shift = _shift(size, TRANSLATION_RATIO)
        params["translation"] = torch.randint(-shift, shift + 1, (batch, 2), generator=generator, device=device)
    if "cutout" in policy:
        side = _shift(size, CUTOUT_RATIO)
        params["cutout"] = torch.randint(
            0, size + (1 - side % 2), (batch, 2), generator=generator, device=device
        )  # square centres
    return params


def translate(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """out[b, :, i, j] = x[b, :, i - dy_b, j - dx_b], zero where that falls outside; offsets (B, 2) = (dy, dx)."""
    batch, _, height, width = x.shape
    rows = torch.arange(height, device=x.device) - offsets[:, :1]  # (B, H): source row of each output row
    cols = torch.arange(width, device=x.device) - offsets[:, 1:]  # (B, W)
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    picked = x[
        torch.arange(batch, device=x.device)[:, None, None],
        :,
        rows.clamp(0, height - 1)[:, :, None],
        cols.clamp(0, width - 1)[:, None, :],
    ]
    return picked.permute(0, 3, 1, 2) * inside[:, None].to(x.dtype)  # advanced indexing put channels last


def cutout(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Zero a square of side round(size / 2) around each image's centre (B, 2) = (row, column), clipped to the image."""
    _, _, height, width = x.shape
    side = _shift(height, CUTOUT_RATIO)
    start = centres - side // 2  # (B, 2): first row and column of the square
    rows = torch.arange(height, device=x.device) - start[:, :1]
    cols = torch.arange(width, device=x.device) - start[:, 1:]
    square = ((rows >= 0) & (rows < side))[:, :, None] & ((cols >= 0) & (cols < side))[:, None, :]
    return x * (~square)[:, None].to(x.dtype)


def adjust_colour(
    x: torch.Tensor, brightness: torch.Tensor, saturation: torch.Tensor, contrast: torch.Tensor
) -> torch.Tensor:
    """Brightness, then saturation (around the per-pixel channel mean), then contrast (around the image mean)."""
    per_image = (-1, 1, 1, 1)
    x = x + brightness.view(per_image).to(x.dtype)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * saturation.view(per_image).to(x.dtype) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast.view(per_image).to(x.dtype) + mean


def augment(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply drawn parameters (on x's device) to images x (B, C, H, W); no parameters: x itself."""
    if "brightness" in params:
        x = adjust_colour(x, params["brightness"], params["saturation"], params["contrast"])
    if "translation" in params:
        x = translate(x, params["translation"])
    if "cutout" in params:
        x = cutout(x, params["cutout"])
    return x
