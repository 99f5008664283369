"""SAGAN generator, discriminator and their layers (128x128 by default, the official model; 32, 64, 256 too)."""

from .config import DiscriminatorConfig, GeneratorConfig, TuningConfig
from .discriminator import Discriminator
from .generator import Generator
from .layers import (
    ClassBatchNorm2d,
    DBlock,
    GBlock,
    SelfAttention,
    SNConv2d,
    SNEmbedding,
    SNLinear,
    frozen_spectral_norm,
    set_tuning,
)

__all__ = [
    "ClassBatchNorm2d",
    "DBlock",
    "Discriminator",
    "DiscriminatorConfig",
    "GBlock",
    "Generator",
    "GeneratorConfig",
    "SelfAttention",
    "SNConv2d",
    "SNEmbedding",
    "SNLinear",
    "TuningConfig",
    "frozen_spectral_norm",
    "set_tuning",
]
