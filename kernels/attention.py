"""SAGAN attention: out = softmax(scale * q k^T) v for one head, with d_v != d_qk and N_q != N_k.

Two paths, neither of which ever holds the N_q x N_k matrix:
- `attention_triton`: streaming-softmax Triton kernels (forward, and a dK/dV pass plus a dQ pass
  for the backward), registered as torch.library triton_ops so torch.compile sees the kernels.
- `attention_reference`: plain torch, walking the queries in chunks; the backward recomputes each
  chunk's probabilities from the saved row-wise log-sum-exp. CPU implementation and test reference.
`attention` picks the Triton path for CUDA tensors and the torch path otherwise.
"""

from __future__ import annotations

import torch

from ._triton_support import INTERPRET, check_triton_device, dot_precision, tl, triton, triton_can_run
from .backend import selected_backend

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




# ----------------------------------------------------------------------------------------------
# Triton kernels
#
# Notation: S = scale * Q K^T, P = softmax(S) row-wise, O = P V. The kernels work in base 2:
# with c = scale * log2(e), softmax(S) = exp2(c Q K^T - m) / sum(...), and the saved row statistic
# is LSE = log(sum_j exp(S_ij)) in natural units, as the torch path saves it.
# ----------------------------------------------------------------------------------------------

MAX_HEAD_DIM = 256
LOG2E = 1.4426950408889634

if triton is not None:

    def _configs(block_pairs):
        if INTERPRET:  # the interpreter would "time" every config on the CPU; one is enough
            return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64})]
        return [
            triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n in block_pairs
            for w in (4, 8)
            for s in (2, 3)
        ]

    _KEY = ["N_Q", "N_K", "D_QK", "D_V"]  # the autotuner adds the tensors' dtypes itself

    @triton.autotune(configs=_configs([(64, 64), (128, 64), (128, 128), (64, 32)]), key=_KEY)
    @triton.jit
    def _attention_fwd_kernel(
        Q, K, V, O, LSE,
        stride_qb, stride_qn, stride_qd,
        stride_kb, stride_kn, stride_kd,
        stride_vb, stride_vn, stride_vd,
        stride_ob, stride_on, stride_od,
        N_Q, N_K, D_QK, D_V, qk_scale_log2,
        BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        # One program: BLOCK_M query rows of one batch entry, streamed over all keys.
        pid_m, batch = tl.program_id(0), tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_dqk = tl.arange(0, BLOCK_DQK)
        offs_dv = tl.arange(0, BLOCK_DV)
        row_ok = offs_m < N_Q
        q = tl.load(
            Q + batch * stride_qb + offs_m[:, None] * stride_qn + offs_dqk[None, :] * stride_qd,
            mask=row_ok[:, None] & (offs_dqk[None, :] < D_QK), other=0.0,
        )
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of c * q.k
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(c * q.k - m_i)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)  # running sum of exp2(...) v
        for start_n in range(0, N_K, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            col_ok = offs_n < N_K
            k_t = tl.load(  # K^T tile: (BLOCK_DQK, BLOCK_N)
                K + batch * stride_kb + offs_n[None, :] * stride_kn + offs_dqk[:, None] * stride_kd,
                mask=col_ok[None, :] & (offs_dqk[:, None] < D_QK), other=0.0,
            )
            s = tl.dot(q, k_t, input_precision=PRECISION) * qk_scale_log2
            s = tl.where(col_ok[None, :], s, float("-inf"))
            # Online softmax: rescale what was accumulated under the old max by exp2(m_old - m_new).
            m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: the first tile always has a key
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(
                V + batch * stride_vb + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                mask=col_ok[:, None] & (offs_dv[None, :] < D_V), other=0.0,
            )
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        acc = acc / l_i[:, None]
        tl.store(
            O + batch * stride_ob + offs_m[:, None] * stride_on + offs_dv[None, :] * stride_od,
            acc.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < D_V),
        )
        tl.store(LSE + batch * N_Q + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=row_ok)  # x ln 2

    @triton.autotune(configs=_configs([(64, 64), (128, 64), (64, 128), (32, 64)]), key=_KEY)
    @triton.jit
    def _attention_bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV,
        stride_qb, stride_qn, stride_qd,
        stride_kb, stride_kn, stride_kd,
        stride_vb, stride_vn, stride_vd,
        stride_dob, stride_don, stride_dod,
        N_Q, N_K, D_QK, D_V, scale, qk_scale_log2,
        BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        # One program: BLOCK_N keys of one batch entry, streamed over all queries.
        #   dV = P^T dO,  dS = P * (dO V^T - delta),  dK = scale * dS^T Q,  delta = rowsum(O * dO)
        pid_n, batch = tl.program_id(0), tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_dqk = tl.arange(0, BLOCK_DQK)
        offs_dv = tl.arange(0, BLOCK_DV)
        col_ok = offs_n < N_K
        k = tl.load(
            K + batch * stride_kb + offs_n[:, None] * stride_kn + offs_dqk[None, :] * stride_kd,
            mask=col_ok[:, None] & (offs_dqk[None, :] < D_QK), other=0.0,
        )
        v = tl.load(
            V + batch * stride_vb + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
            mask=col_ok[:, None] & (offs_dv[None, :] < D_V), other=0.0,
        )
        dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
        for start_m in range(0, N_Q, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_ok = offs_m < N_Q
            q_t = tl.load(  # Q^T tile: (BLOCK_DQK, BLOCK_M)
                Q + batch * stride_qb + offs_m[None, :] * stride_qn + offs_dqk[:, None] * stride_qd,
                mask=row_ok[None, :] & (offs_dqk[:, None] < D_QK), other=0.0,
            )
            do = tl.load(
                DO + batch * stride_dob + offs_m[:, None] * stride_don + offs_dv[None, :] * stride_dod,
                mask=row_ok[:, None] & (offs_dv[None, :] < D_V), other=0.0,
            )
            lse_log2 = tl.load(LSE + batch * N_Q + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634  # x log2 e
            delta = tl.load(DELTA + batch * N_Q + offs_m, mask=row_ok, other=0.0)
            # P^T tile (BLOCK_N, BLOCK_M), recomputed from the saved LSE.
            s_t = tl.dot(k, q_t, input_precision=PRECISION) * qk_scale_log2
            p_t = tl.where(row_ok[None, :] & col_ok[:, None], tl.exp2(s_t - lse_log2[None, :]), 0.0)
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q_t.dtype), tl.trans(q_t), input_precision=PRECISION)
        out_ok = col_ok[:, None]
        tl.store(
            DK + batch * N_K * D_QK + offs_n[:, None] * D_QK + offs_dqk[None, :],
            (dk * scale).to(DK.dtype.element_ty), mask=out_ok & (offs_dqk[None, :] < D_QK),
        )
        tl.store(
            DV + batch * N_K * D_V + offs_n[:, None] * D_V + offs_dv[None, :],
            dv.to(DV.dtype.element_ty), mask=out_ok & (offs_dv[None, :] < D_V),
        )

    @triton.autotune(configs=_configs([(64, 64), (128, 64), (64, 128), (128, 32)]), key=_KEY)
    @triton.jit
    def _attention_bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA, DQ,
        stride_qb, stride_qn, stride_qd,
        stride_kb, stride_kn, stride_kd,
        stride_vb, stride_vn, stride_vd,
        stride_dob, stride_don, stride_dod,
        N_Q, N_K, D_QK, D_V, scale, qk_scale_log2,
        BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        # One program: BLOCK_M queries of one batch entry, streamed over all keys.
        #   dQ = scale * dS K,  dS = P * (dO V^T - delta)
        pid_m, batch = tl.program_id(0), tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_dqk = tl.arange(0, BLOCK_DQK)
        offs_dv = tl.arange(0, BLOCK_DV)
        row_ok = offs_m < N_Q
        q = tl.load(
            Q + batch * stride_qb + offs_m[:, None] * stride_qn + offs_dqk[None, :] * stride_qd,
            mask=row_ok[:, None] & (offs_dqk[None, :] < D_QK), other=0.0,
        )
        do = tl.load(
            DO + batch * stride_dob + offs_m[:, None] * stride_don + offs_dv[None, :] * stride_dod,
            mask=row_ok[:, None] & (offs_dv[None, :] < D_V), other=0.0,
        )
        lse_log2 = tl.load(LSE + batch * N_Q + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634  # x log2 e
        delta = tl.load(DELTA + batch * N_Q + offs_m, mask=row_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
        for start_n in range(0, N_K, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            col_ok = offs_n < N_K
            k = tl.load(
                K + batch * stride_kb + offs_n[:, None] * stride_kn + offs_dqk[None, :] * stride_kd,
                mask=col_ok[:, None] & (offs_dqk[None, :] < D_QK), other=0.0,
            )
            v_t = tl.load(  # V^T tile: (BLOCK_DV, BLOCK_N)
                V + batch * stride_vb + offs_n[None, :] * stride_vn + offs_dv[:, None] * stride_vd,
                mask=col_ok[None, :] & (offs_dv[:, None] < D_V), other=0.0,
            )
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale_log2
            p = tl.where(row_ok[:, None] & col_ok[None, :], tl.exp2(s - lse_log2[:, None]), 0.0)
            dp = tl.dot(do, v_t, input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
        tl.store(
            DQ + batch * N_Q * D_QK + offs_m[:, None] * D_QK + offs_dqk[None, :],
            (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_dqk[None, :] < D_QK),
        )


def _block_dim(d: int) -> int:
    return max(16, triton.next_power_of_2(d))  # tl.dot needs tiles of at least 16


def _strides(*tensors: torch.Tensor) -> list[int]:
    return [s for t in tensors for s in t.stride()]


def attention_fwd_launch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, out: torch.Tensor, lse: torch.Tensor
) -> None:
    """Write O (B, N_q, d_v, contiguous) and LSE (B, N_q, float32) for already checked inputs."""
    B, N_Q, D_QK = q.shape
    N_K, D_V = v.shape[1], v.shape[2]
    grid = lambda meta: (triton.cdiv(N_Q, meta["BLOCK_M"]), B)  # noqa: E731
    torch.library.wrap_triton(_attention_fwd_kernel)[grid](
        q, k, v, out, lse, *_strides(q, k, v, out),
        N_Q, N_K, D_QK, D_V, scale * LOG2E,
        BLOCK_DQK=_block_dim(D_QK), BLOCK_DV=_block_dim(D_V), PRECISION=dot_precision(q.dtype),
    )


def attention_bwd_launch(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    scale: float, grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor,
) -> None:
    """Write dQ, dK, dV (contiguous, the inputs' shapes) from O, LSE and dO."""
    B, N_Q, D_QK = q.shape
    N_K, D_V = v.shape[1], v.shape[2]
    delta = (out.float() * grad_out.float()).sum(dim=-1)  # rowsum(O * dO), (B, N_Q)
    common = dict(BLOCK_DQK=_block_dim(D_QK), BLOCK_DV=_block_dim(D_V), PRECISION=dot_precision(q.dtype))
    sizes = (N_Q, N_K, D_QK, D_V, scale, scale * LOG2E)
    strides = _strides(q, k, v, grad_out)
    torch.library.wrap_triton(_attention_bwd_dkdv_kernel)[lambda meta: (triton.cdiv(N_K, meta["BLOCK_N"]), B)](
        q, k, v, grad_out, lse, delta, grad_k, grad_v, *strides, *sizes, **common
    )
    torch.library.wrap_triton(_attention_bwd_dq_kernel)[lambda meta: (triton.cdiv(N_Q, meta["BLOCK_M"]), B)](
        q, k, v, grad_out, lse, delta, grad_q, *strides, *sizes, **common
    )


@torch.library.triton_op("tritonsagan::attention_fwd", mutates_args=())
def _attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    B, N_Q = q.shape[:2]
    out = torch.empty((B, N_Q, v.shape[2]), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, N_Q), device=q.device, dtype=torch.float32)
    attention_fwd_launch(q, k, v, scale, out, lse)
    return out, lse


@torch.library.triton_op("tritonsagan::attention_bwd", mutates_args=())
def _attention_bwd(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_q = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    grad_k = torch.empty(k.shape, device=q.device, dtype=q.dtype)
    grad_v = torch.empty(v.shape, device=q.device, dtype=q.dtype)
    attention_bwd_launch(grad_out, q, k, v, out, lse, scale, grad_q, grad_k, grad_v)
    return grad_q, grad_k, grad_v


def _attention_setup_context(ctx, inputs, output) -> None:
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _attention_backward(ctx, grad_out, _grad_lse):
    # lse is an internal statistic: nothing downstream differentiates it.
    q, k, v, out, lse = ctx.saved_tensors
    grad_q, grad_k, grad_v = torch.ops.tritonsagan.attention_bwd(grad_out, q, k, v, out, lse, ctx.scale)
    return grad_q, grad_k, grad_v, None


_attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup_context)


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """softmax(scale * q k^T) v by the Triton kernels, with autograd.

    q: (B, N_q, d_qk), k: (B, N_k, d_qk), v: (B, N_k, d_v) with d_qk, d_v <= 256, any strides;
    float32/float16/bfloat16 on CUDA (float32 accumulation), or CPU tensors under TRITON_INTERPRET=1.
    """
    check_attention_inputs(q, k, v)
    check_triton_device("attention_triton", q)
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"attention_triton: dtype must be float32, float16 or bfloat16, got {q.dtype}")
    if q.shape[2] > MAX_HEAD_DIM or v.shape[2] > MAX_HEAD_DIM:
        raise ValueError(f"attention_triton: d_qk and d_v must be at most {MAX_HEAD_DIM}, got q {tuple(q.shape)}, v {tuple(v.shape)}")
    out, _ = torch.ops.tritonsagan.attention_fwd(q, k, v, float(scale))
    return out


def attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """What SAGAN ports do: the whole (B, N_q, N_k) matrix through bmm and softmax. The benchmarks' baseline."""
    check_attention_inputs(q, k, v)
    return torch.bmm(torch.softmax(scale * torch.bmm(q, k.transpose(1, 2)), dim=-1), v)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """softmax(scale * q k^T) v: the Triton kernels for CUDA tensors, the torch path otherwise.

    `tritonsagan.kernels.use_backend(...)` overrides the choice (see kernels.backend).
    """
    backend = selected_backend()
    if backend == "triton" or (backend == "auto" and q.is_cuda and triton_can_run(q)):
        return attention_triton(q, k, v, scale)
    if backend == "naive":
        return attention_naive(q, k, v, scale)
    return attention_reference(q, k, v, scale)
