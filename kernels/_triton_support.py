"""Whether Triton can run here, and how: on CUDA, or through its interpreter on CPU tensors.

The kernel files (`*_kernels.py`) import triton directly and are imported only when it is installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

# Read once: triton decides between compiled and interpreted kernels when they are decorated.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None  # a Linux-only dependency


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


@dataclass(frozen=True)
class KernelLaunch:
    """A launch as `record_launches` collects it: the kernel and the arguments it would get."""

    kernel: Any  # a @triton.jit function, or its @triton.autotune wrapper
    args: tuple
    kwargs: dict[str, Any]


_recorded: list[KernelLaunch] | None = None


def _fake(args: tuple) -> bool:
    """Whether the arguments are a tracer's fake tensors (no data), as under torch.compile."""
    from torch._subclasses.fake_tensor import is_fake

    return any(isinstance(a, torch.Tensor) and is_fake(a) for a in args)


def launch(kernel: Any, grid: Callable[[dict], tuple[int, ...]] | tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    """Launch a Triton kernel, or record it inside `record_launches`.

    Through torch.library.wrap_triton only while a tracer is looking (torch.compile must see the
    kernel): on plain tensors wrap_triton's eager path would rebuild a pruned autotuner, benchmarking
    every config again, at each call. Interpreted kernels run directly (torch < 2.13's wrap_triton
    refuses them); on fake tensors there they have nothing to compute (e.g. torch._dynamo.explain).
    """
    from torch.utils._python_dispatch import is_in_torch_dispatch_mode

    if _recorded is not None:
        _recorded.append(KernelLaunch(kernel, args, kwargs))
    elif INTERPRET:
        if not _fake(args):
            kernel[grid](*args, **kwargs)
    elif _fake(args) or is_in_torch_dispatch_mode():
        torch.library.wrap_triton(kernel)[grid](*args, **kwargs)
    else:
        kernel[grid](*args, **kwargs)


@contextlib.contextmanager
def record_launches() -> Iterator[list[KernelLaunch]]:
    """Inside this block the launch functions collect their launches instead of running them, so
    they can be called on meta tensors: the Hopper compile check compiles exactly what they launch."""
    global _recorded
    previous, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = previous
