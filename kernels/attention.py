"""SAGAN attention: out = softmax(scale * q k^T) v for one head, with d_v != d_qk and N_q != N_k.

- `attention_naive`: the whole (B, N_q, N_k) matrix through bmm and softmax, as SAGAN ports do.
  The one ground truth of the tests (run in float64) and the benchmarks' baseline.
- `attention_chunked`: plain torch walking the queries in chunks, never holding the N_q x N_k
  matrix; the backward recomputes each chunk's probabilities from the saved row-wise
  log-sum-exp. The CPU path.
- `attention_triton`: the streaming-softmax Triton kernels (`attention_kernels`), registered as
  torch.library triton_ops so torch.compile sees them. The CUDA path.
`attention` picks the Triton path for CUDA tensors and the chunked torch path otherwise.
"""

from __future__ import annotations

import warnings

import torch

from ._triton_support import HAS_TRITON, check_triton_device, triton_offered
from .backend import selected_backend

if HAS_TRITON:
    from . import attention_kernels  # registers the tritonsagan::attention_* ops

QUERY_CHUNK = 256


def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise a ValueError naming the shapes, devices or dtypes when q, k, v do not fit together."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"attention: {name} must be a tensor, got {type(t).__name__}")
        if t.ndim != 3:
            raise ValueError(f"attention: {name} must be 3-D (B, N, d), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"attention: {name} must be a floating-point tensor, got {t.dtype}")
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"attention: batch sizes differ: {shapes}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"attention: q and k feature sizes (d_qk) differ: {shapes}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"attention: k and v key counts (N_k) differ: {shapes}")
    if k.shape[1] == 0:
        raise ValueError(f"attention: softmax over zero keys is undefined: {shapes}")


def attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """What SAGAN ports do: the whole (B, N_q, N_k) matrix through bmm and softmax, in q's dtype."""
    check_attention_inputs(q, k, v)
    return torch.bmm(torch.softmax(scale * torch.bmm(q, k.transpose(1, 2)), dim=-1), v)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale: float, chunk: int):
        acc = _accumulation_dtype(q.dtype)
        k_t = k.to(acc).transpose(1, 2)
        v_acc = v.to(acc)
        outs, lses = [], []
        for start in range(0, q.shape[1], chunk):
            scores = torch.bmm(q[:, start : start + chunk].to(acc), k_t) * scale
            row_max = scores.amax(dim=-1, keepdim=True)
            p = torch.exp(scores - row_max)
            row_sum = p.sum(dim=-1, keepdim=True)
            outs.append(torch.bmm(p, v_acc) / row_sum)
            lses.append(row_max + row_sum.log())
        out = torch.cat(outs, dim=1).to(q.dtype)
        lse = torch.cat(lses, dim=1)  # (B, N_q, 1), log sum_j exp(s_ij)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.chunk = scale, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        acc = lse.dtype
        k_acc, v_acc = k.to(acc), v.to(acc)
        grad_k = torch.zeros_like(k_acc)
        grad_v = torch.zeros_like(v_acc)
        grad_q_chunks = []
        for start in range(0, q.shape[1], chunk):
            rows = slice(start, start + chunk)
            q_c, do_c = q[:, rows].to(acc), grad_out[:, rows].to(acc)
            # P = exp(S - lse): the chunk's softmax, recomputed instead of stored.
            p = torch.exp(torch.bmm(q_c, k_acc.transpose(1, 2)) * scale - lse[:, rows])
            grad_v = grad_v + torch.bmm(p.transpose(1, 2), do_c)
            # dS = P * (dP - rowsum(dO * O)), with dP = dO V^T
            delta = (do_c * out[:, rows].to(acc)).sum(dim=-1, keepdim=True)
            grad_s = p * (torch.bmm(do_c, v_acc.transpose(1, 2)) - delta) * scale
            grad_q_chunks.append(torch.bmm(grad_s, k_acc))
            grad_k = grad_k + torch.bmm(grad_s.transpose(1, 2), q_c)
        grad_q = torch.cat(grad_q_chunks, dim=1)
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), None, None


def attention_chunked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0, query_chunk: int = QUERY_CHUNK
) -> torch.Tensor:
    """softmax(scale * q k^T) v in plain torch, O(query_chunk * N_k) extra memory per batch entry.

    q: (B, N_q, d_qk), k: (B, N_k, d_qk), v: (B, N_k, d_v) -> (B, N_q, d_v). Any strides.
    Computes in float32 (float64 for float64 inputs) and returns q's dtype.
    """
    check_attention_inputs(q, k, v)
    if query_chunk < 1:
        raise ValueError(f"attention: query_chunk must be positive, got {query_chunk}")
    return _ChunkedAttention.apply(q, k, v, float(scale), int(query_chunk))


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """softmax(scale * q k^T) v by the Triton kernels, with autograd.

    q: (B, N_q, d_qk), k: (B, N_k, d_qk), v: (B, N_k, d_v) with d_qk <= 64 and d_v <= 256 (SAGAN's
    attention up to C = 512 channels; larger head dims spill registers on Hopper and are refused),
    any strides; float32/float16/bfloat16 on CUDA (float32 accumulation; float32 dots are exact
    unless torch.backends.cuda.matmul.allow_tf32), or CPU tensors under TRITON_INTERPRET=1.
    """
    check_attention_inputs(q, k, v)
    check_triton_device("attention_triton", q)
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"attention_triton: dtype must be float32, float16 or bfloat16, got {q.dtype}")
    if not attention_kernels.head_dims_supported(q.shape[2], v.shape[2]):
        raise ValueError(
            f"attention_triton: head dims must be d_qk <= {attention_kernels.MAX_D_QK} and d_v <= {attention_kernels.MAX_D_V}, "
            f"got d_qk {q.shape[2]}, d_v {v.shape[2]}; `attention` runs larger ones on the chunked torch path"
        )
    out, _ = torch.ops.tritonsagan.attention_fwd(q, k, v, float(scale))
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """softmax(scale * q k^T) v: the Triton kernels for CUDA tensors, the chunked torch path otherwise.

    Head dims beyond the kernels' limits (see `attention_triton`) take the chunked torch path on
    CUDA too, with a warning (in eager mode). `tritonsagan.kernels.use_backend(...)` overrides the choice.
    """
    backend = selected_backend()
    if backend == "auto" and q.is_cuda and triton_offered(q):
        if attention_kernels.head_dims_supported(q.shape[2], v.shape[2]):
            return attention_triton(q, k, v, scale)
        if not torch.compiler.is_compiling():  # a warning inside a compiled region would break the graph
            warnings.warn(
                f"attention: d_qk {q.shape[2]}, d_v {v.shape[2]} exceed the Triton kernels' limits (d_qk <= {attention_kernels.MAX_D_QK}, "
                f"d_v <= {attention_kernels.MAX_D_V}); running the slower chunked torch path",
                stacklevel=2,
            )
        return attention_chunked(q, k, v, scale)
    if backend == "triton":
        return attention_triton(q, k, v, scale)
    if backend == "naive":
        return attention_naive(q, k, v, scale)
    return attention_chunked(q, k, v, scale)
