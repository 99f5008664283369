"""Attention at SAGAN's shapes: our Triton kernel vs torch SDPA's backends vs FlexAttention (compiled)
vs bmm + softmax vs our torch path, with each one's extra memory; out of memory is reported as such."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from tritonsagan.kernels import attention_chunked, attention_naive, attention_triton
from tritonsagan.kernels._triton_support import triton_can_run

from .timing import floor_ms, median_ms, peak_extra_bytes, rotating

# (name, N_q, N_k, d_qk, d_v): G and D at 32x32 (queries H*W, keys pooled to H*W/4), and G's
# attention were it at 64x64 or 128x128 (ch 64), where the N_q x N_k matrix outgrows the GPU.
SHAPES = [("G 32x32", 1024, 256, 32, 128), ("D 32x32", 1024, 256, 16, 64), ("G 64x64", 4096, 1024, 16, 64), ("G 128x128", 16384, 4096, 8, 32)]
SMALL_SHAPES = ("G 32x32", "D 32x32")  # at every batch; the large ones at the largest only
NAIVE = "naive bmm+softmax"  # what SAGAN ports do
FLEX = "flex (compiled)"


def _sdpa(backend) -> Callable:
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0).squeeze(1)

    return run


def _flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention)  # FlexAttention is a compiled kernel; eager it is a reference loop

    def run(q, k, v):
        return compiled(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0).squeeze(1)

    return run


def implementations(device: torch.device) -> dict[str, Callable | str]:
    """Every contender; a string says why one cannot run on this device."""
    from torch.nn.attention import SDPBackend

    on_cuda = device.type == "cuda"
    impls: dict[str, Callable | str] = {
        "triton": attention_triton if on_cuda and triton_can_run(torch.empty(0, device=device)) else "Triton kernels run on CUDA",
        NAIVE: attention_naive,
        "torch chunked": attention_chunked,
        FLEX: _flex() if on_cuda else "benchmarked on CUDA only",
    }
    if on_cuda:
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
    cases = [(shape, batch) for shape in SHAPES if shape[0] in SMALL_SHAPES for batch in batches]
    if on_cuda and not quick:
        cases += [(shape, batches[-1]) for shape in SHAPES if shape[0] not in SMALL_SHAPES]
    impls = implementations(device)
    rows = []
    for (name, nq, nk, dqk, dv), batch in cases:
        inputs = [
            tuple(torch.randn(batch, n, d, device=device, dtype=dtype, requires_grad=True) for n, d in ((nq, dqk), (nk, dqk), (nk, dv)))
            for _ in range(3)
        ]
        grads = [torch.randn(batch, nq, dv, device=device, dtype=dtype) for _ in inputs]
        for impl_name, impl in impls.items():
            row = {"shape": name, "batch": batch, "n_q": nq, "n_k": nk, "d_qk": dqk, "d_v": dv,
                   "dtype": str(dtype).removeprefix("torch."), "impl": impl_name}  # fmt: skip
            if isinstance(impl, str):
                rows.append({**row, "available": False, "reason": impl})
                continue
            try:
                forward = rotating(lambda q, k, v: impl(q, k, v), inputs)
                sets = [(*i, g) for i, g in zip(inputs, grads)]
                both = rotating(lambda q, k, v, g: torch.autograd.grad(impl(q, k, v), (q, k, v), g), sets)
                row["fwd_ms"] = median_ms(forward, device, quick)
                row["fwd_bwd_ms"] = median_ms(both, device, quick)
                row["peak_extra_bytes"] = peak_extra_bytes(both, device)
            except Exception as err:  # out of memory, or a backend refusing the shape (SDPA, FlexAttention's head dims >= 16)
                rows.append({**row, "available": False, "reason": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"})
                if on_cuda:
                    torch.cuda.empty_cache()
                continue
            for pass_name, backward in (("fwd", False), ("fwd_bwd", True)):
                flops, nbytes = _flops_bytes(batch, nq, nk, dqk, dv, inputs[0][0].element_size(), backward)
                ms = row[f"{pass_name}_ms"]
                row[f"{pass_name}_tflops"] = flops / (ms * 1e-3) / 1e12
                row[f"{pass_name}_gbps"] = nbytes / (ms * 1e-3) / 1e9
                row[f"{pass_name}_pct_of_floor"] = 100 * floor_ms(flops, nbytes, floor) / ms
            rows.append({**row, "available": True})
    return rows
