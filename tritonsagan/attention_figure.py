"""Where G's self-attention looks, as the paper draws it (SAGAN, Fig. 1 and 5): `attention_maps`
computes only the chosen query rows of softmax(q K^T); `attention_figure` draws them: each image with
its numbered query points, then one panel per query with that query's attention over the image,
upsampled smoothly, under one colour scale. Heat is measured against uniform attention (1: every key
weighted alike) and coloured only above it, so the image shows wherever a query looks no more than
average, and an untrained G (attention near uniform) leaves the image uncovered. Drawing needs
matplotlib (`pip install matplotlib`, the package's plot extra).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tritonsagan.models import Generator

from .errors import ConfigError
from .images import to_uint8
from .seeding import noise_inputs_seeded

HEAT_COLORMAP = "inferno"
HEAT_OPACITY = 0.8  # of the strongest attention in the figure; weaker attention lets more of the image through
UNIFORM = 1.0  # heat of uniform attention: the bottom of the colour scale
MIN_SCALE_TOP = 2.0  # the colour scale reaches at least twice uniform, so near-uniform noise stays faint
PANEL_INCHES = 2.0
MARKER_COLOURS = [f"C{i}" for i in range(10)]  # one colour per query, the same in every panel


@torch.inference_mode()
def attention_maps(
    generator: Generator, z: torch.Tensor, labels: torch.Tensor | None, queries: Sequence[int], noise_seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and, for each query position of G's attention layer, its attention row as a map (G's
    noise inputs, where it has them, seeded with `noise_seed`).

    Only the selected rows softmax(q_i K^T) are computed (from the block's own theta and pooled phi
    features), never the full N x N matrix. Returns uint8 images (B, 3, size, size) and maps
    (B, len(queries), H/2, W/2) over the pooled key grid, each summing to 1.
    """
    block = generator.attention
    if block is None:
        raise ValueError("this generator has no attention layer (attn_res=0)")
    captured = {}
    hook = block.register_forward_hook(lambda module, inputs, output: captured.update(x=inputs[0]))
    try:
        param = next(generator.parameters())
        generator.eval()
        with noise_inputs_seeded(generator, noise_seed):
            images = generator(z.to(param.device, param.dtype), None if labels is None else labels.to(param.device))
    finally:
        hook.remove()
    x = captured["x"]
    batch, _, height, width = x.shape
    if not all(0 <= q < height * width for q in queries):
        raise ValueError(f"query positions must be in [0, {height * width}) for the {height}x{width} attention layer")
    rows = block.theta(x).flatten(2)[:, :, list(queries)].float()  # (B, C/8, Q): only the chosen queries
    keys = F.max_pool2d(block.phi(x), 2).flatten(2).float()  # (B, C/8, N/4)
    maps = torch.softmax(rows.transpose(1, 2) @ keys, dim=-1)  # (B, Q, N/4)
    return to_uint8(images), maps.reshape(batch, len(queries), height // 2, width // 2).cpu()


def upsample_heat(maps: torch.Tensor, size: int) -> np.ndarray:
    """(B, Q, h, w) maps -> (B, Q, size, size), bilinear, in units of uniform attention (1: each key
    weighted 1/(h w); 5: five times that), so the colour scale reads the same for any grid."""
    keys = maps.shape[-1] * maps.shape[-2]
    return (
        (F.interpolate(maps.double() * keys, size=(size, size), mode="bilinear", align_corners=False))
        .clamp(min=0)
        .numpy()
    )


def overlay(image: np.ndarray, heat: np.ndarray, top: float) -> np.ndarray:
    """HWC float RGB in [0, 1]: the image in grey, under the heat in HEAT_COLORMAP whose opacity grows
    with the heat above uniform (0 at or below UNIFORM, HEAT_OPACITY at `top`)."""
    from matplotlib import colormaps

    grey = (image.astype(np.float64) / 255) @ np.array([0.299, 0.587, 0.114])
    level = np.clip((heat - UNIFORM) / (top - UNIFORM), 0, 1)
    alpha = HEAT_OPACITY * level[..., None]
    return (1 - alpha) * grey[..., None] + alpha * colormaps[HEAT_COLORMAP](level)[..., :3]


def attention_figure(
    images: torch.Tensor, maps: torch.Tensor, points: Sequence[tuple[int, int]], captions: Sequence[str] | None = None
):
    """A matplotlib Figure: one row per image, the image with its numbered query points (x, y in
    pixels), then one panel per query showing its attention, and a colour bar for all of them."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("--attention-maps draws with matplotlib: pip install matplotlib (the package's plot extra)")
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    count, size = images.shape[0], images.shape[-1]
    heat = upsample_heat(maps, size)
    top = max(float(heat.max()), MIN_SCALE_TOP)
    columns = 1 + len(points)
    figure = Figure(figsize=(PANEL_INCHES * columns + 1.2, PANEL_INCHES * count + 0.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.asarray(figure.subplots(count, columns, squeeze=False))
    for row, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        axes[row, 0].imshow(image)
        axes[row, 0].set_ylabel(captions[row] if captions else f"image {row + 1}")
        for number, point in enumerate(points, 1):
            _mark(axes[row, 0], point, number)
            axes[row, number].imshow(overlay(image, heat[row, number - 1], top))
            _mark(axes[row, number], point, number)
            if row == 0:
                axes[row, number].set_title(f"query {number} at ({point[0]}, {point[1]})", fontsize="medium")
        if row == 0:
            axes[row, 0].set_title("queries", fontsize="medium")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    scale = ScalarMappable(Normalize(UNIFORM, top), colormaps[HEAT_COLORMAP])
    figure.colorbar(scale, ax=axes, shrink=min(1.0, 0.9 / count**0.5), label="attention weight / uniform")
    return figure


def _mark(ax, point: tuple[int, int], number: int) -> None:
    colour = MARKER_COLOURS[(number - 1) % len(MARKER_COLOURS)]
    ax.plot(*point, "o", markersize=7, markerfacecolor=colour, markeredgecolor="white", markeredgewidth=1.5)
    ax.annotate(
        str(number),
        point,
        xytext=(5, 4),
        textcoords="offset points",
        color="white",
        fontsize="small",
        fontweight="bold",
        bbox={"boxstyle": "round,pad=0.15", "facecolor": colour, "edgecolor": "none"},
    )


def figure_to_array(figure) -> np.ndarray:
    """An HWC uint8 RGB rendering of a matplotlib Figure (for images.save_image)."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
