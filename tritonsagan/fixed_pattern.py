"""How much of a set of images is a pattern drawn at the same place in every image: the frames and
grids an early GAN generator paints over whatever it draws.

Each image's edge map is e(p) = |dx| + |dy| of its grey level (0..255) at pixel p, and M(p) is the
mean of e(p) over the images. Crops taken at random places of any photos have the same expected edge
map at every p, so M varies from pixel to pixel only by sampling noise; a frame or grid at fixed
places makes it vary. The score is

    fixed_pattern = sqrt(max(0, Var_p M(p) - mean_p Var_i e_i(p) / n)) / mean_p M(p),

the spread of the expected edge map over positions relative to its mean, less the share that n
independent images leave by chance. Random crops score about 0; the score grows with the contrast of
what every image repeats (n copies of one image score the spread of its own edge map, several for a
thin frame on a flat field). Near-copies (a collapsed class) are not independent, so they leave more
noise than is removed: compare sets of equal size and make.
"""

from __future__ import annotations

import torch


def edge_maps(images: torch.Tensor) -> torch.Tensor:
    """(n, height - 1, width - 1) float64: |horizontal| + |vertical| difference of each image's grey level."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3 or min(images.shape[2:]) < 2:
        raise ValueError(
            f"images must be uint8 (n, 3, height >= 2, width >= 2), got {images.dtype} {tuple(images.shape)}"
        )
    grey = images.to(torch.float64).mean(1)
    dx = (grey[:, :-1, 1:] - grey[:, :-1, :-1]).abs()
    dy = (grey[:, 1:, :-1] - grey[:, :-1, :-1]).abs()
    return dx + dy


def fixed_pattern(images: torch.Tensor) -> float:
    """How far the images' mean edge map varies from place to place, relative to its mean, less what
    chance leaves (see the module): about 0 for random crops, higher the more every image repeats."""
    if len(images) < 2:
        raise ValueError(f"fixed_pattern needs at least 2 images, got {len(images)}")
    edges = edge_maps(images)
    mean_map = edges.mean(0)
    if float(mean_map.mean()) == 0.0:
        return 0.0  # flat images: no edges anywhere, fixed or not
    chance = float(edges.var(0).mean()) / len(edges)
    spread = max(0.0, float(mean_map.var(correction=0)) - chance)
    return spread**0.5 / float(mean_map.mean())
