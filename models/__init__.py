"""SAGAN-128 generator, discriminator and their layers."""

from .discriminator import Discriminator, DiscriminatorConfig
from .generator import Generator, GeneratorConfig
from .layers import ClassBatchNorm2d, DBlock, GBlock, SelfAttention, SNConv2d, SNEmbedding, SNLinear

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
]
