"""Attention and spectral-norm ops: Triton kernels, their torch paths, dispatch."""

from ._triton_support import device_generation
from .attention import attention, attention_chunked, attention_naive, attention_triton
from .backend import use_backend
from .spectral_norm import init_spectral_norm_vectors, spectral_norm, spectral_norm_torch, spectral_norm_triton

__all__ = [
    "attention",
    "attention_chunked",
    "attention_naive",
    "attention_triton",
    "device_generation",
    "init_spectral_norm_vectors",
    "spectral_norm",
    "spectral_norm_torch",
    "spectral_norm_triton",
    "use_backend",
]
