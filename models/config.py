"""The configs G and D are built from: every model default lives here, once.

`Generator(GeneratorConfig(...))` or `Generator(ch=32, ...)` (fields of the config as keywords);
`from_pretrained` rebuilds the config from the saved JSON and the model from the config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

IMAGE_CHANNELS = 3  # G's output and D's input: RGB
IMAGE_SIZE = 128  # the official ImageNet model's; image_size of the configs
IMAGE_SIZES = (32, 64, 128, 256)  # those with an architecture table below
BASE_WIDTH = 64  # ch of the official ImageNet model
ATTENTION_RESOLUTION = 32  # where the official code puts self-attention, in G and in D
Z_DIM = 128

# The architecture tables of BigGAN-PyTorch (BigGAN.py G_arch / D_arch), whose 128 entry is the official
# SAGAN ImageNet model. G: the 4x4 input's width, then each up-block's output width, in multiples of
# ch; up-block i outputs 8 * 2**i pixels.
G_WIDTHS = {32: (4, 4, 4, 4), 64: (16, 16, 8, 4, 2), 128: (16, 16, 8, 4, 2, 1), 256: (16, 16, 8, 8, 4, 2, 1)}
# D: each block's output width in multiples of ch, and whether it halves the resolution.
D_WIDTHS = {32: (4, 4, 4, 4), 64: (1, 2, 4, 8, 16), 128: (1, 2, 4, 8, 16, 16), 256: (1, 2, 4, 8, 8, 16, 16)}
D_DOWNSAMPLES = {
    32: (True, True, False, False),
    64: (True,) * 4 + (False,),
    128: (True,) * 5 + (False,),
    256: (True,) * 6 + (False,),
}


def check_image_size(name: str, image_size: int) -> None:
    """A ValueError naming `name` (a field or a flag) unless image_size has an architecture table."""
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"{name} must be one of {', '.join(map(str, IMAGE_SIZES))}, got {image_size}")


def g_block_resolutions(image_size: int) -> tuple[int, ...]:
    """The output resolution of each G up-block: 8 .. image_size."""
    return tuple(8 * 2**i for i in range(len(G_WIDTHS[image_size]) - 1))


def d_block_resolutions(image_size: int) -> tuple[int, ...]:
    """The output resolution of each D block."""
    resolutions, size = [], image_size
    for downsample in D_DOWNSAMPLES[image_size]:
        size //= 2 if downsample else 1
        resolutions.append(size)
    return tuple(resolutions)


# Initialisation of every weight: the official code's Xavier-uniform, or BigGAN-PyTorch's orthogonal. The
# default is BigGAN-PyTorch's, with its biases below, on the learning benchmark's evidence (README, "Learning").
INITS = ("xavier", "orthogonal")
INIT = "orthogonal"
# Every conv and linear bias at the start: the official code's zeros, or torch's default uniform in
# +-1 / sqrt(fan_in), which BigGAN-PyTorch leaves in place. The default is BigGAN-PyTorch's: with zero
# biases D grew more confident and G learned markedly slower on the learning benchmark.
BIAS_INITS = ("zeros", "uniform")
BIAS_INIT = "uniform"
# G's per-class batch-norm gains and biases at the start: the official code's 1 and 0, or BigGAN-PyTorch's
# 1 + e(y) and e(y) with e an orthogonally initialised embedding. The default is BigGAN-PyTorch's, on the
# learning benchmark's evidence (bench/results/learning/: every class learned sooner; README, "Learning").
CLASS_BN_INITS = ("identity", "random")
CLASS_BN_INIT = "random"
# How G's 3x3 convolutions pad: the official code's zeros, or reflect (not in SAGAN), which gives G no
# border to read its place in the image from, so it cannot draw a pattern at the same places in every
# image as easily (README, "Reflect padding").
G_PADDINGS = ("zeros", "reflect")
G_PADDING = "zeros"
# How many times faster than G's other weights the noise inputs' strengths learn (layers.NoiseInput);
# at 1 they had not taken the lattice away in 1,500 steps of the learning benchmark, at 10 they did
# (README, "Noise inputs").
NOISE_STRENGTH_GAIN = 10.0

# The attention block's 1x1 convolutions: query and key (theta, phi) have channels / 8 outputs, the
# value (g) channels / 2, as in the official sn_non_local_block_sim.
ATTENTION_QUERY_KEY_RATIO = 8
ATTENTION_VALUE_RATIO = 2


def _attention_block(model: str, attn_res: int, image_size: int, resolutions: tuple[int, ...]) -> int:
    """Index of the first block whose output goes through self-attention (-1: none)."""
    if attn_res == 0:
        return -1
    if attn_res not in resolutions:
        choices = ", ".join(map(str, sorted(set(resolutions))))
        raise ValueError(
            f"{model}: at image_size {image_size}, attn_res must be 0 (no attention) or one of {choices}, got {attn_res}"
        )
    return resolutions.index(attn_res)


def _check_choice(model: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{model}: {name} must be one of {', '.join(choices)}, got {value!r}")


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
    image_size: int = IMAGE_SIZE
    init: str = INIT
    bias_init: str = BIAS_INIT
    class_bn_init: str = CLASS_BN_INIT
    noise_inputs: bool = False  # layers.NoiseInput after each up-block conv3x3 (not in SAGAN)
    padding: str = G_PADDING

    def __post_init__(self) -> None:
        check_image_size("Generator: image_size", self.image_size)
        _check_choice("Generator", "padding", self.padding, G_PADDINGS)
        _check_choice("Generator", "init", self.init, INITS)
        _check_choice("Generator", "bias_init", self.bias_init, BIAS_INITS)
        _check_choice("Generator", "class_bn_init", self.class_bn_init, CLASS_BN_INITS)
        _check_widths(
            "Generator", self.ch, self.num_classes, self.attn_res, G_WIDTHS[self.image_size][self.attention_block + 1]
        )
        if self.z_dim < 1:
            raise ValueError(f"Generator: z_dim must be positive, got {self.z_dim}")

    @property
    def widths(self) -> tuple[int, ...]:
        """The 4x4 input's channels, then each up-block's output channels."""
        return tuple(w * self.ch for w in G_WIDTHS[self.image_size])

    @property
    def attention_block(self) -> int:
        """Index of the up-block followed by self-attention (-1: none)."""
        return _attention_block("Generator", self.attn_res, self.image_size, g_block_resolutions(self.image_size))


@dataclass(frozen=True)
class DiscriminatorConfig:
    ch: int = BASE_WIDTH
    num_classes: int = 0  # 0: unconditional
    attn_res: int = ATTENTION_RESOLUTION  # 0: no attention
    image_size: int = IMAGE_SIZE
    init: str = INIT
    bias_init: str = BIAS_INIT

    def __post_init__(self) -> None:
        check_image_size("Discriminator: image_size", self.image_size)
        _check_choice("Discriminator", "init", self.init, INITS)
        _check_choice("Discriminator", "bias_init", self.bias_init, BIAS_INITS)
        _check_widths(
            "Discriminator", self.ch, self.num_classes, self.attn_res, D_WIDTHS[self.image_size][self.attention_block]
        )

    @property
    def widths(self) -> tuple[int, ...]:
        """Each block's output channels."""
        return tuple(w * self.ch for w in D_WIDTHS[self.image_size])

    @property
    def attention_block(self) -> int:
        """Index of the first block whose output goes through self-attention (-1: none)."""
        return _attention_block("Discriminator", self.attn_res, self.image_size, d_block_resolutions(self.image_size))


@dataclass(frozen=True)
class TuningConfig:
    """How G and D compute, never what: the same weights and, up to float rounding, the same results.
    Each switch stays off until a GPU report shows it faster (tritonsagan-bench's tuning variants)."""

    channels_last: bool = False  # activations in channels_last memory format (NHWC convolutions)
    fused_qkv: bool = False  # the attention block's theta, phi, g as one 1x1 convolution of their stacked weights
    grouped_sn: bool = False  # every SN layer's power iteration in one grouped update per training forward
    sn_autocast_dtype: bool = False  # W / sigma written in the autocast dtype (no separate cast)
