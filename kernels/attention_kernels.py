"""Triton kernels of SAGAN attention, their launch plans and their torch.library triton_ops.

Notation: S = scale * Q K^T, P = softmax(S) row-wise, O = P V, one head, d_v != d_qk, N_q != N_k.
The kernels work in base 2: with c = scale * log2(e), softmax(S) = exp2(c Q K^T - m) / sum(...);
the saved row statistic is LSE = log(sum_j exp(S_ij)) in natural units, as the torch path saves it.
Forward: one program per BLOCK_M query rows, streaming the keys with a running max and sum.
Backward: delta = rowsum(O * dO), then a dK/dV pass (one program per BLOCK_N keys) and a dQ pass
(one program per BLOCK_M queries), each recomputing P from the saved LSE.

Imported only where triton is installed; `kernels.attention` holds the checks and the dispatch.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._triton_support import INTERPRET, device_generation, dot_precision, launch
from .attention_configs import CONFIG_TABLES, HEAD_DIM_TIERS

LOG2E: tl.constexpr = tl.constexpr(math.log2(math.e))
LN2: tl.constexpr = tl.constexpr(math.log(2.0))
MIN_DOT_BLOCK = 16  # tl.dot needs tiles of at least 16 along every dimension
MAX_D_QK = 64  # head-dim limits of the kernels (SAGAN's d_qk = C/8, d_v = C/2: up to C = 512, G at ch 128)
MAX_D_V = 256


def _generation_configs(device: torch.device) -> dict:
    """The config table of the device's GPU generation; on one without (the Triton path forced with
    use_backend("triton")), the oldest generation's."""
    generation = device_generation(device)
    return CONFIG_TABLES.get(generation.target if generation else "", CONFIG_TABLES["sm_80"])


def head_dims_supported(d_qk: int, d_v: int) -> bool:
    return d_qk <= MAX_D_QK and d_v <= MAX_D_V


def _tier(block_dqk: int, block_dv: int) -> int:
    """The smallest tier covering both block dims (its BLOCK_DV names it)."""
    return next(dv for dqk, dv in HEAD_DIM_TIERS if block_dqk <= dqk and block_dv <= dv)


def _precision_family(dtype: torch.dtype, precision: str) -> str:
    return "half" if dtype in (torch.float16, torch.bfloat16) else precision  # fp32: "ieee" or "tf32"


def _autotune(kernel: str):
    """@triton.autotune over every config of the kernel's table, pruned to the launch's row of it."""
    if INTERPRET:  # the interpreter would "time" every config on the CPU; one is enough
        return triton.autotune(configs=[triton.Config({"BLOCK_M": 64, "BLOCK_N": 64})], key=[])
    every = sorted(
        {
            entry
            for tables in CONFIG_TABLES.values()
            for family in tables[kernel].values()
            for tier in family.values()
            for entry in tier
        }
    )
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in every]

    def offered(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        table = _generation_configs(named_args["Q"].device)[kernel]
        family = _precision_family(named_args["Q"].dtype, kwargs["PRECISION"])
        wanted = set(table[family][_tier(kwargs["BLOCK_DQK"], kwargs["BLOCK_DV"])])
        return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted]

    # The autotuner adds the tensors' dtypes to the key itself.
    return triton.autotune(
        configs=configs,
        key=["N_Q", "N_K", "D_QK", "D_V", "PRECISION"],
        prune_configs_by={"early_config_prune": offered},
    )


@triton.jit
def _load_tile(base, rows, cols, stride_row, stride_col, n_rows, n_cols):
    """tile[i, j] = base[rows[i] * stride_row + cols[j] * stride_col], zero outside n_rows x n_cols."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(base + rows[:, None] * stride_row + cols[None, :] * stride_col, mask=mask, other=0.0)


@triton.jit
def _store_tile(base, tile, rows, cols, stride_row, n_rows, n_cols):
    """The row-major (stride_row, 1) counterpart of _load_tile, casting to the destination's dtype."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    tl.store(base + rows[:, None] * stride_row + cols[None, :], tile.to(base.dtype.element_ty), mask=mask)


@_autotune("forward")
@triton.jit
def _attention_fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    stride_qb,
    stride_qn,
    stride_qd,
    stride_kb,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vn,
    stride_vd,
    N_Q,
    N_K,
    D_QK,
    D_V,
    qk_scale_log2,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # One program: BLOCK_M query rows of one batch entry, streamed over all keys. O and LSE are contiguous.
    pid_m, batch = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load_tile(Q + batch * stride_qb, offs_m, offs_dqk, stride_qn, stride_qd, N_Q, D_QK)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of c * q.k
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(c * q.k - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)  # running sum of exp2(...) v
    for start_n in range(0, N_K, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_t = _load_tile(K + batch * stride_kb, offs_dqk, offs_n, stride_kd, stride_kn, D_QK, N_K)  # K^T tile
        s = tl.dot(q, k_t, input_precision=PRECISION) * qk_scale_log2
        s = tl.where((offs_n < N_K)[None, :], s, float("-inf"))
        # Online softmax: rescale what was accumulated under the old max by exp2(m_old - m_new).
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: the first tile always has a key
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = _load_tile(V + batch * stride_vb, offs_n, offs_dv, stride_vn, stride_vd, N_K, D_V)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    _store_tile(O + batch * N_Q * D_V, acc / l_i[:, None], offs_m, offs_dv, D_V, N_Q, D_V)
    tl.store(LSE + batch * N_Q + offs_m, (m_i + tl.log2(l_i)) * LN2, mask=offs_m < N_Q)


@_autotune("dkdv")
@triton.jit
def _attention_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    stride_qb,
    stride_qn,
    stride_qd,
    stride_kb,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vn,
    stride_vd,
    stride_dob,
    stride_don,
    stride_dod,
    N_Q,
    N_K,
    D_QK,
    D_V,
    scale,
    qk_scale_log2,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # One program: BLOCK_N keys of one batch entry, streamed over all queries. DK, DV are contiguous.
    #   dV = P^T dO,  dS = P * (dO V^T - delta),  dK = scale * dS^T Q,  delta = rowsum(O * dO)
    pid_n, batch = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    col_ok = offs_n < N_K
    k = _load_tile(K + batch * stride_kb, offs_n, offs_dqk, stride_kn, stride_kd, N_K, D_QK)
    v = _load_tile(V + batch * stride_vb, offs_n, offs_dv, stride_vn, stride_vd, N_K, D_V)
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    for start_m in range(0, N_Q, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N_Q
        q_t = _load_tile(Q + batch * stride_qb, offs_dqk, offs_m, stride_qd, stride_qn, D_QK, N_Q)  # Q^T tile
        do = _load_tile(DO + batch * stride_dob, offs_m, offs_dv, stride_don, stride_dod, N_Q, D_V)
        lse_log2 = tl.load(LSE + batch * N_Q + offs_m, mask=row_ok, other=0.0) * LOG2E
        delta = tl.load(DELTA + batch * N_Q + offs_m, mask=row_ok, other=0.0)
        # P^T tile (BLOCK_N, BLOCK_M), recomputed from the saved LSE.
        s_t = tl.dot(k, q_t, input_precision=PRECISION) * qk_scale_log2
        p_t = tl.where(row_ok[None, :] & col_ok[:, None], tl.exp2(s_t - lse_log2[None, :]), 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q_t.dtype), tl.trans(q_t), input_precision=PRECISION)
    _store_tile(DK + batch * N_K * D_QK, dk * scale, offs_n, offs_dqk, D_QK, N_K, D_QK)
    _store_tile(DV + batch * N_K * D_V, dv, offs_n, offs_dv, D_V, N_K, D_V)


@_autotune("dq")
@triton.jit
def _attention_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    stride_qb,
    stride_qn,
    stride_qd,
    stride_kb,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vn,
    stride_vd,
    stride_dob,
    stride_don,
    stride_dod,
    N_Q,
    N_K,
    D_QK,
    D_V,
    scale,
    qk_scale_log2,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # One program: BLOCK_M queries of one batch entry, streamed over all keys. DQ is contiguous.
    #   dQ = scale * dS K,  dS = P * (dO V^T - delta)
    pid_m, batch = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < N_Q
    q = _load_tile(Q + batch * stride_qb, offs_m, offs_dqk, stride_qn, stride_qd, N_Q, D_QK)
    do = _load_tile(DO + batch * stride_dob, offs_m, offs_dv, stride_don, stride_dod, N_Q, D_V)
    lse_log2 = tl.load(LSE + batch * N_Q + offs_m, mask=row_ok, other=0.0) * LOG2E
    delta = tl.load(DELTA + batch * N_Q + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(K + batch * stride_kb, offs_n, offs_dqk, stride_kn, stride_kd, N_K, D_QK)
        v_t = _load_tile(V + batch * stride_vb, offs_dv, offs_n, stride_vd, stride_vn, D_V, N_K)  # V^T tile
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale_log2
        p = tl.where(row_ok[:, None] & (offs_n < N_K)[None, :], tl.exp2(s - lse_log2[:, None]), 0.0)
        dp = tl.dot(do, v_t, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    _store_tile(DQ + batch * N_Q * D_QK, dq * scale, offs_m, offs_dqk, D_QK, N_Q, D_QK)


# ---- launches ------------------------------------------------------------------------------------


def _block_dim(d: int) -> int:
    return max(MIN_DOT_BLOCK, triton.next_power_of_2(d))


def _strides(*tensors: torch.Tensor) -> list[int]:
    return [s for t in tensors for s in t.stride()]


def _head_constexprs(q: torch.Tensor, v: torch.Tensor) -> dict:
    return {
        "BLOCK_DQK": _block_dim(q.shape[2]),
        "BLOCK_DV": _block_dim(v.shape[2]),
        "PRECISION": dot_precision(q.dtype),
    }


def attention_fwd_launch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, out: torch.Tensor, lse: torch.Tensor
) -> None:
    """Write O (B, N_q, d_v, contiguous) and LSE (B, N_q, float32) for already checked inputs."""
    B, N_Q, D_QK = q.shape
    N_K, D_V = v.shape[1], v.shape[2]
    grid = lambda meta: (triton.cdiv(N_Q, meta["BLOCK_M"]), B)  # noqa: E731
    launch(
        _attention_fwd_kernel,
        grid,
        q,
        k,
        v,
        out,
        lse,
        *_strides(q, k, v),
        N_Q,
        N_K,
        D_QK,
        D_V,
        scale * LOG2E.value,
        **_head_constexprs(q, v),
    )


def attention_bwd_launch(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    grad_q: torch.Tensor,
    grad_k: torch.Tensor,
    grad_v: torch.Tensor,
) -> None:
    """Write dQ, dK, dV (contiguous, the inputs' shapes) from O, LSE and dO."""
    B, N_Q, D_QK = q.shape
    N_K, D_V = v.shape[1], v.shape[2]
    delta = (out.float() * grad_out.float()).sum(dim=-1)  # rowsum(O * dO), (B, N_Q)
    shared = (*_strides(q, k, v, grad_out), N_Q, N_K, D_QK, D_V, scale, scale * LOG2E.value)
    constexprs = _head_constexprs(q, v)
    launch(
        _attention_bwd_dkdv_kernel,
        lambda meta: (triton.cdiv(N_K, meta["BLOCK_N"]), B),
        q,
        k,
        v,
        grad_out,
        lse,
        delta,
        grad_k,
        grad_v,
        *shared,
        **constexprs,
    )
    launch(
        _attention_bwd_dq_kernel,
        lambda meta: (triton.cdiv(N_Q, meta["BLOCK_M"]), B),
        q,
        k,
        v,
        grad_out,
        lse,
        delta,
        grad_q,
        *shared,
        **constexprs,
    )


# ---- torch.library ops --------------------------------------------------------------------------


@torch.library.triton_op("tritonsagan::attention_fwd", mutates_args=())
def _attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    B, N_Q = q.shape[:2]
    out = torch.empty((B, N_Q, v.shape[2]), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, N_Q), device=q.device, dtype=torch.float32)
    attention_fwd_launch(q, k, v, scale, out, lse)
    return out, lse


@torch.library.triton_op("tritonsagan::attention_bwd", mutates_args=())
def _attention_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
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
