"""Whether Triton can run here, and how: on CUDA, or through its interpreter on CPU tensors.

The kernel files (`*_kernels.py`) import triton directly and are imported only when it is installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
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


@dataclass(frozen=True)
class Generation:
    """An NVIDIA GPU generation the compile check (tritonsagan.bench.compile_check) compiles for."""

    target: str  # triton's compile target
    capability: tuple[int, int]
    shared_bytes: int  # shared memory one block may use (the opt-in limit)
    gpus: str
    tensor_dot: str  # the instruction half-precision dots must become: wgmma or mma
    triton: bool  # whether the Triton kernels are offered there; False: the torch paths run


# Each generation's configs and its triton flag come from the compile check's report.
GENERATIONS = (
    Generation("sm_75", (7, 5), 65536, "T4, RTX 20xx", "mma", triton=False),
    Generation("sm_80", (8, 0), 166912, "A100, A30", "mma", triton=True),
    Generation("sm_86", (8, 6), 101376, "RTX 30xx, A10, A40", "mma", triton=True),
    Generation("sm_89", (8, 9), 101376, "RTX 40xx, L4, L40S", "mma", triton=True),
    Generation("sm_90a", (9, 0), 232448, "H100, H200", "wgmma", triton=True),
)
_generation_by_device: dict[int, Generation | None] = {}
_compile_target: Generation | None = None


def generation_of(capability: tuple[int, int], shared_bytes: int) -> Generation | None:
    """The newest checked generation a GPU can run the configs of: at or below its compute capability,
    within its shared memory per block (e.g. an RTX 50xx, 12.0 with 99 KiB, runs sm_89's); None below sm_75."""
    fitting = [g for g in GENERATIONS if g.capability <= capability and g.shared_bytes <= shared_bytes]
    return fitting[-1] if fitting else None


def device_generation(device: torch.device) -> Generation | None:
    """The generation whose configs a CUDA device runs (read from the device once; inside
    `compile_target`, that target's). The first time a GPU gets no Triton kernels, one line says so."""
    if _compile_target is not None:
        return _compile_target
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _generation_by_device:
        properties = torch.cuda.get_device_properties(index)
        capability = (properties.major, properties.minor)
        # An older torch without the opt-in limit: the capability alone decides.
        shared_bytes = getattr(properties, "shared_memory_per_block_optin", None) or 2**31
        generation = generation_of(capability, shared_bytes)
        _generation_by_device[index] = generation
        if generation is None or not generation.triton:
            print(
                f"note: {properties.name} (compute capability {capability[0]}.{capability[1]}): the Triton kernels are not "
                "offered on this GPU generation; attention and spectral norm run their torch paths",
                file=sys.stderr,
                flush=True,
            )
    return _generation_by_device[index]


def triton_offered(t: torch.Tensor) -> bool:
    """Whether the "auto" backend runs the Triton kernels on t: on CUDA, where its GPU's generation
    offers them (on CPU tensors under TRITON_INTERPRET=1 too)."""
    if not triton_can_run(t):
        return False
    if not t.is_cuda:
        return True
    generation = device_generation(t.device)
    return generation is not None and generation.triton


@contextlib.contextmanager
def compile_target(generation: Generation) -> Iterator[None]:
    """Inside this block the autotuners offer `generation`'s configs whatever the tensors' device: the
    compile check records the launches on meta tensors for each target."""
    global _compile_target
    previous, _compile_target = _compile_target, generation
    try:
        yield
    finally:
        _compile_target = previous


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
    they can be called on meta tensors: the compile check compiles exactly what they launch."""
    global _recorded
    previous, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = previous
