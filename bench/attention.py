"""Attention at SAGAN's shapes: our Triton kernel vs torch SDPA backends vs bmm + softmax vs our torch path."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..kernels import attention_naive, attention_chunked, attention_triton
from ..kernels._triton_support import triton_can_run
from .timing import floor_ms, median_ms, peak_extra_bytes, rotating

# (name, N_q, N_k, d_qk, d_v): G and D at 32x32 and G at 64x64 (queries H*W, keys pooled to H*W/4)
SHAPES = [("G 32x32", 1024, 256, 32, 128), ("D 32x32", 1024, 256, 16, 64), ("G 64x64", 4096, 1024, 16, 64)]


def _sdpa(backend) -> Callable:
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0).squeeze(1)

    return run


def implementations(device: torch.device) -> dict[str, Callable | None]:
    """Every contender; None marks one that cannot run on this device."""
    from torch.nn.attention import SDPBackend

    impls: dict[str, Callable | None] = {
        "triton": attention_triton if triton_can_run(torch.empty(0, device=device)) and device.type == "cuda" else None,
        "naive bmm+softmax": attention_naive,
        "torch chunked": attention_chunked,
    }
    if device.type == "cuda":
        impls["sdpa mem-efficient"] = _sdpa(SDPBackend.EFFICIENT_ATTENTION)
        impls["sdpa cudnn"] = _sdpa(SDPBackend.CUDNN_ATTENTION)
        impls["sdpa math"] = _sdpa(SDPBackend.MATH)
    else:
        impls["sdpa (math on CPU)"] = _sdpa(SDPBackend.MATH)
    return impls


def _flops_bytes(batch: int, nq: int, nk: int, dqk: int, dv: int, elem: int, backward: bool) -> tuple[float, float]:
    forward_flops = 2.0 * batch * nq * nk * (dqk + dv)
    io = batch * elem * (nq * dqk + nk * dqk + nk * dv + nq * dv)  # read q, k, v; write o
    if not backward:
        return forward_flops, io
    return 3 * forward_flops, 3 * io  # backward: 2x the matmuls; reads q,k,v,o,dO, writes dq,dk,dv


def run(device: torch.device, floor: dict, quick: bool = False) -> list[dict]:
    on_cuda = device.type == "cuda"
    dtype = torch.bfloat16 if on_cuda else torch.float32
    batches = ([64] if quick else [16, 64, 128, 256]) if on_cuda else ([2] if quick else [2, 8])
    shapes = SHAPES[:2] if quick or not on_cuda else SHAPES
    rows = []
    for name, nq, nk, dqk, dv in shapes:
        for batch in batches:
            inputs = [
                tuple(torch.randn(batch, n, d, device=device, dtype=dtype, requires_grad=True) for n, d in ((nq, dqk), (nk, dqk), (nk, dv)))
                for _ in range(3)
            ]
            grads = [torch.randn(batch, nq, dv, device=device, dtype=dtype) for _ in inputs]
            for impl_name, impl in implementations(device).items():
                row = {"shape": name, "batch": batch, "n_q": nq, "n_k": nk, "d_qk": dqk, "d_v": dv,
                       "dtype": str(dtype).removeprefix("torch."), "impl": impl_name}  # fmt: skip
                if impl is None:
                    rows.append({**row, "available": False})
                    continue
                try:
                    forward = rotating(lambda q, k, v: impl(q, k, v), inputs)
                    sets = [(*i, g) for i, g in zip(inputs, grads)]
                    both = rotating(lambda q, k, v, g: torch.autograd.grad(impl(q, k, v), (q, k, v), g), sets)
                    row["fwd_ms"] = median_ms(forward, device, quick)
                    row["fwd_bwd_ms"] = median_ms(both, device, quick)
                    row["peak_extra_bytes"] = peak_extra_bytes(both, device)
                except (RuntimeError, torch.OutOfMemoryError) as err:  # e.g. an SDPA backend refusing the shape
                    rows.append({**row, "available": False, "reason": str(err).splitlines()[0][:200]})
                    continue
                for pass_name, backward in (("fwd", False), ("fwd_bwd", True)):
                    flops, nbytes = _flops_bytes(batch, nq, nk, dqk, dv, inputs[0][0].element_size(), backward)
                    ms = row[f"{pass_name}_ms"]
                    row[f"{pass_name}_tflops"] = flops / (ms * 1e-3) / 1e12
                    row[f"{pass_name}_gbps"] = nbytes / (ms * 1e-3) / 1e9
                    row[f"{pass_name}_pct_of_floor"] = 100 * floor_ms(flops, nbytes, floor) / ms
                rows.append({**row, "available": True})
    return rows
