"""Whether Triton can run here, and how: on CUDA, or through its interpreter on CPU tensors."""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is a Linux-only dependency
    triton = None
    tl = None

# Read once: triton decides between compiled and interpreted kernels when they are decorated.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = triton is not None


def triton_can_run(t: torch.Tensor) -> bool:
    """Triton kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1."""
    return HAS_TRITON and (t.is_cuda or (INTERPRET and t.device.type == "cpu"))


def check_triton_device(op: str, t: torch.Tensor) -> None:
    if not HAS_TRITON:
        raise RuntimeError(f"{op}: triton is not installed")
    if not triton_can_run(t):
        raise ValueError(f"{op}: needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {t.device}")


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots honour torch's TF32 switch (off by default, so fp32 stays fp32)."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not INTERPRET:
        return "tf32"
    return "ieee"
