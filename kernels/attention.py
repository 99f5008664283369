"""SAGAN attention: out = softmax(scale * q k^T) v for one head, with d_v != d_qk and N_q != N_k.

`attention_reference` is the plain-torch path (CPU implementation and the tests' reference). It
walks the queries in chunks, so neither the forward nor the backward ever holds more than
(B, chunk, N_k) scores: the backward recomputes each chunk's probabilities from the saved
row-wise log-sum-exp, exactly as a flash-attention kernel does.
"""

from __future__ import annotations

import torch

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


def attention_reference(
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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """softmax(scale * q k^T) v, dispatched by device (see `attention_reference` for shapes)."""
    return attention_reference(q, k, v, scale)
