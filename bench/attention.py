"""Attention at SAGAN's shapes: our Triton kernel vs torch SDPA's backends vs FlexAttention (compiled)
vs bmm + softmax vs our torch path, with each one's extra memory; out of memory is reported as such."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.table import Table
from tritonsagan.kernels import attention_chunked, attention_naive, attention_triton
from tritonsagan.kernels._triton_support import triton_can_run

from .cells import number, ratio, table
from .timing import floor_ms, median_ms, peak_extra_bytes, rotating

# (name, N_q, N_k, d_qk, d_v): G and D at 32x32 (queries H*W, keys pooled to H*W/4), and G's
# attention were it at 64x64 or 128x128 (ch 64), where the N_q x N_k matrix outgrows the GPU.
SHAPES = [
    ("G 32x32", 1024, 256, 32, 128),
    ("D 32x32", 1024, 256, 16, 64),
    ("G 64x64", 4096, 1024, 16, 64),
    ("G 128x128", 16384, 4096, 8, 32),
]
SMALL_SHAPES = (
    "G 32x32",
    "D 32x32",
)  # at every batch (and where the targets apply); the large ones at the largest only
SUMMARY_SHAPE = "G 32x32"
# Implementation names, as rows and reports spell them.
TRITON = "triton"
NAIVE = "naive bmm+softmax"  # what SAGAN ports do
CHUNKED = "torch chunked"
FLEX = "flex (compiled)"
SDPA = "sdpa"  # the prefix of every SDPA backend's name


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
        TRITON: attention_triton
        if on_cuda and triton_can_run(torch.empty(0, device=device))
        else "Triton kernels run on CUDA",
        NAIVE: attention_naive,
        CHUNKED: attention_chunked,
        FLEX: _flex() if on_cuda else "benchmarked on CUDA only",
    }
    if on_cuda:
        impls[f"{SDPA} mem-efficient"] = _sdpa(SDPBackend.EFFICIENT_ATTENTION)
        impls[f"{SDPA} cudnn"] = _sdpa(SDPBackend.CUDNN_ATTENTION)
        impls[f"{SDPA} math"] = _sdpa(SDPBackend.MATH)
    else:
        impls[f"{SDPA} (math on CPU)"] = _sdpa(SDPBackend.MATH)
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
            tuple(
                torch.randn(batch, n, d, device=device, dtype=dtype, requires_grad=True)
                for n, d in ((nq, dqk), (nk, dqk), (nk, dv))
            )
            for _ in range(3)
        ]
        grads = [torch.randn(batch, nq, dv, device=device, dtype=dtype) for _ in inputs]
        for impl_name, impl in impls.items():
            row = {
                "shape": name,
                "batch": batch,
                "n_q": nq,
                "n_k": nk,
                "d_qk": dqk,
                "d_v": dv,
                "dtype": str(dtype).removeprefix("torch."),
                "impl": impl_name,
            }
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
            except (
                Exception
            ) as err:  # out of memory, or a backend refusing the shape (SDPA, FlexAttention's head dims >= 16)
                rows.append(
                    {
                        **row,
                        "available": False,
                        "reason": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}",
                    }
                )
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


def results_table(rows: list[dict]) -> Table:
    out = table(
        f"Attention (fwd+bwd speed-up vs {NAIVE})",
        ("shape", "batch", "impl", "fwd ms", "fwd+bwd ms", "TFLOP/s", "GB/s", "% floor", "peak MiB", "vs naive"),
    )
    naive = {(r["shape"], r["batch"]): r.get("fwd_bwd_ms") for r in rows if r["impl"] == NAIVE}
    for r in rows:
        if not r["available"]:
            out.add_row(r["shape"], str(r["batch"]), r["impl"], "n/a", *["-"] * 6)
            continue
        peak = r["peak_extra_bytes"] / 2**20 if r["peak_extra_bytes"] is not None else None
        out.add_row(
            r["shape"],
            str(r["batch"]),
            r["impl"],
            number(r["fwd_ms"]),
            number(r["fwd_bwd_ms"]),
            number(r["fwd_bwd_tflops"]),
            number(r["fwd_bwd_gbps"]),
            number(r["fwd_bwd_pct_of_floor"]),
            number(peak),
            ratio(naive.get((r["shape"], r["batch"])), r["fwd_bwd_ms"]),
        )
    return out


SUMMARY_HEADER = f"attention fwd+bwd ms, {SUMMARY_SHAPE}: Triton / best SDPA / bmm+softmax"


def summary_cell(rows: list[dict]) -> str:
    """fwd+bwd ms at the largest batch of SUMMARY_SHAPE: ours / the best SDPA backend / bmm + softmax."""
    shape_rows = [r for r in rows if r["shape"] == SUMMARY_SHAPE]
    if not shape_rows:
        return "-"
    batch = max(r["batch"] for r in shape_rows)
    times = {r["impl"]: r.get("fwd_bwd_ms") for r in shape_rows if r["batch"] == batch and r["available"]}
    sdpa = min((t for name, t in times.items() if name.startswith(SDPA)), default=None)
    return (
        f"batch {batch}: {number(times.get(TRITON), 'n/a')} / {number(sdpa, 'n/a')} / {number(times.get(NAIVE), 'n/a')}"
    )
