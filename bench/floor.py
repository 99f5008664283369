"""The device floor, measured on the spot: a large matmul (FLOP/s) and a large copy (bytes/s)."""

from __future__ import annotations

import torch

from .timing import median_ms


def measure_floor(device: torch.device, quick: bool = False) -> dict[str, float | str]:
    """bf16 matmul on CUDA (float32 on CPU, where bf16 matmul is not the fast path) and a device copy."""
    on_cuda = device.type == "cuda"
    dtype = torch.bfloat16 if on_cuda else torch.float32
    n = (8192 if not quick else 4096) if on_cuda else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    matmul = median_ms(lambda: a @ b, device, quick)
    copy_elems = (1 << 28) if on_cuda else (1 << 24)
    src = torch.empty(copy_elems, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    copy = median_ms(lambda: dst.copy_(src), device, quick)
    return {
        "matmul_dtype": str(dtype).removeprefix("torch."),
        "matmul_size": n,
        "flops_per_s": 2 * n**3 / (matmul * 1e-3),
        "bytes_per_s": 2 * src.numel() * src.element_size() / (copy * 1e-3),  # read + write
    }
