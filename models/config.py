"""The configs G and D are built from: every model default lives here, once.

`Generator(GeneratorConfig(...))` or `Generator(ch=32, ...)` (fields of the config as keywords);
`from_pretrained` rebuilds the config from the saved JSON and the model from the config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

IMAGE_CHANNELS, IMAGE_SIZE = 3, 128  # G's output and D's input: RGB, 128x128
IMAGE_SHAPE = (IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
BASE_WIDTH = 64  # ch of the official ImageNet model
ATTENTION_RESOLUTION = 32  # where the official code puts self-attention, in G and in D
Z_DIM = 128

# Width of each G up-block output, in multiples of ch; up-block i outputs 8 * 2**i pixels.
G_WIDTHS = (16, 16, 8, 4, 2, 1)
G_BLOCK_RESOLUTIONS = tuple(8 * 2**i for i in range(len(G_WIDTHS) - 1))  # 8 .. 128
# Width of each D block output, in multiples of ch, and its output resolution.
D_WIDTHS = (1, 2, 4, 8, 16, 16)
D_BLOCK_RESOLUTIONS = (64, 32, 16, 8, 4, 4)
# The attention block's 1x1 convolutions: query and key (theta, phi) have channels / 8 outputs, the
# value (g) channels / 2, as in the official sn_non_local_block_sim.
ATTENTION_QUERY_KEY_RATIO = 8
ATTENTION_VALUE_RATIO = 2


def _attention_block(model: str, attn_res: int, resolutions: tuple[int, ...]) -> int:
    """Index of the block whose output goes through self-attention (-1: none)."""
    if attn_res == 0:
        return -1
    if attn_res not in resolutions:
        choices = ", ".join(map(str, sorted(set(resolutions))))
        raise ValueError(f"{model}: attn_res must be 0 (no attention) or one of {choices}, got {attn_res}")
    return resolutions.index(attn_res)


def _check_widths(model: str, ch: int, num_classes: int, attn_res: int, attention_factor: int) -> None:
    """ch and num_classes, and that the attention block's attention_factor * ch channels divide by ATTENTION_QUERY_KEY_RATIO."""
    if ch < 1:
        raise ValueError(f"{model}: ch must be positive, got {ch}")
    if num_classes < 0:
        raise ValueError(f"{model}: num_classes must be >= 0 (0: unconditional), got {num_classes}")
    if attn_res and attention_factor * ch % ATTENTION_QUERY_KEY_RATIO:
        step = ATTENTION_QUERY_KEY_RATIO // math.gcd(attention_factor, ATTENTION_QUERY_KEY_RATIO)
        raise ValueError(
            f"{model}: ch={ch} gives the attention block at {attn_res}x{attn_res} {attention_factor * ch} channels, "
            f"which must be a multiple of {ATTENTION_QUERY_KEY_RATIO}; use a ch that is a multiple of {step} (e.g. {step * max(1, round(ch / step))})"
        )


@dataclass(frozen=True)
class GeneratorConfig:
    ch: int = BASE_WIDTH
    z_dim: int = Z_DIM
    num_classes: int = 0  # 0: unconditional
    attn_res: int = ATTENTION_RESOLUTION  # 0: no attention

    def __post_init__(self) -> None:
        _check_widths("Generator", self.ch, self.num_classes, self.attn_res, G_WIDTHS[self.attention_block + 1])
        if self.z_dim < 1:
            raise ValueError(f"Generator: z_dim must be positive, got {self.z_dim}")

    @property
    def attention_block(self) -> int:
        """Index of the up-block followed by self-attention (-1: none)."""
        return _attention_block("Generator", self.attn_res, G_BLOCK_RESOLUTIONS)


@dataclass(frozen=True)
class DiscriminatorConfig:
    ch: int = BASE_WIDTH
    num_classes: int = 0  # 0: unconditional
    attn_res: int = ATTENTION_RESOLUTION  # 0: no attention

    def __post_init__(self) -> None:
        _check_widths("Discriminator", self.ch, self.num_classes, self.attn_res, D_WIDTHS[self.attention_block])

    @property
    def attention_block(self) -> int:
        """Index of the block followed by self-attention (-1: none)."""
        return _attention_block("Discriminator", self.attn_res, D_BLOCK_RESOLUTIONS)


@dataclass(frozen=True)
class TuningConfig:
    """How G and D compute, never what: the same weights and, up to float rounding, the same results.
    Each switch stays off until a GPU report shows it faster (tritonsagan-bench's tuning variants)."""

    channels_last: bool = False  # activations in channels_last memory format (NHWC convolutions)
    fused_qkv: bool = False  # the attention block's theta, phi, g as one 1x1 convolution of their stacked weights
    grouped_sn: bool = False  # every SN layer's power iteration in one grouped update per training forward
    sn_autocast_dtype: bool = False  # W / sigma written in the autocast dtype (no separate cast)

