"""Triton kernels of the fused spectral norm, their launch plans and their torch.library triton_ops.

W is the contiguous [R, C] matrix; every sum accumulates in float32. A power iteration is two
passes over W, t = W v (rows kernel) and s = W^T t (columns kernel), and a one-program finish:
with v = normalize(W^T u), sigma = u^T W v = ||W^T u|| comes for free. Then W_sn = W / sigma
(scale kernel, optionally writing the autocast dtype directly); the backward
dW = (G - <G, W_sn> u v^T) / sigma is a reduction pass and a write pass. The grouped kernels run
the power iteration of many layers at once (three launches for a whole model).

Imported only where triton is installed; `kernels.spectral_norm` holds the checks and the dispatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._triton_support import INTERPRET, launch

FINISH_BLOCK = 1024
ELEMENTWISE_BLOCK = 16384 if INTERPRET else 2048


def _configs(blocks: list[tuple[int, int, int]], interpreted: tuple[int, int]) -> list[triton.Config]:
    """(BLOCK_R, BLOCK_C, num_warps) configs; one in the interpreter, which would "time" each on the CPU."""
    if INTERPRET:
        return [triton.Config({"BLOCK_R": interpreted[0], "BLOCK_C": interpreted[1]})]
    return [triton.Config({"BLOCK_R": r, "BLOCK_C": c}, num_warps=w) for r, c, w in blocks]


@triton.jit
def _rows_times_vector(W, V, rows, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """(W v)[rows] in float32, streaming across the C columns of the row-major [R, C] matrix W."""
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        w = tl.load(W + rows[:, None] * C + cols[None, :], mask=(rows[:, None] < R) & (cols[None, :] < C), other=0.0)
        v = tl.load(V + cols, mask=cols < C, other=0.0)
        acc += tl.sum(w.to(tl.float32) * v.to(tl.float32)[None, :], axis=1)
    return acc


@triton.jit
def _columns_times_vector(W, T, cols, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """(W^T t)[cols] in float32, streaming down the R rows of the row-major [R, C] matrix W."""
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(0, R, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        w = tl.load(W + rows[:, None] * C + cols[None, :], mask=(rows[:, None] < R) & (cols[None, :] < C), other=0.0)
        t = tl.load(T + rows, mask=rows < R, other=0.0)
        acc += tl.sum(w.to(tl.float32) * t[:, None], axis=0)
    return acc


# From the compile check: (64, 128) at 4 warps spills on Hopper on weights with few columns (C = 3, 27).
@triton.autotune(
    configs=_configs(
        [
            (8, 512, 4),
            (8, 512, 8),
            (16, 256, 4),
            (16, 256, 8),
            (32, 128, 4),
            (32, 128, 8),
            (64, 128, 8),
            (4, 1024, 4),
            (4, 1024, 8),
        ],
        interpreted=(64, 256),
    ),
    key=["R", "C"],
)
@triton.jit
def _sn_rows_kernel(W, V, T, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # t = W v: one program per block of rows.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    tl.store(T + rows, _rows_times_vector(W, V, rows, R, C, BLOCK_R, BLOCK_C), mask=rows < R)


# From the compile check: at 4 warps, all but (512, 16) spill in float16 on weights with few columns
# (C = 3, 27) on sm_86, sm_89 or sm_90a.
@triton.autotune(
    configs=_configs([(256, 32, 8), (128, 64, 8), (64, 128, 8), (512, 16, 8), (512, 16, 4)], interpreted=(256, 64)),
    key=["R", "C"],
)
@triton.jit
def _sn_cols_kernel(W, T, S, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # s = W^T t: one program per block of columns.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    tl.store(S + cols, _columns_times_vector(W, T, cols, R, C, BLOCK_R, BLOCK_C), mask=cols < C)


@triton.jit
def _finish_power_iteration(T, S, U, V, U_USED, V_USED, SIGMA, R, C, eps, BLOCK: tl.constexpr, COPIES: tl.constexpr):
    """With t = W v and s = W^T t from the two passes:
      u = t / max(||t||, eps);  W^T u = s / max(||t||, eps);  v = W^T u / max(||W^T u||, eps)
      sigma = u^T W v = ||W^T u||^2 / max(||W^T u||, eps)
    Writes u, v, sigma, and with COPIES the final u, v again into U_USED, V_USED."""
    t_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, R, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        t = tl.load(T + offs, mask=offs < R, other=0.0)
        t_sq += t * t
    t_scale = 1.0 / tl.maximum(tl.sqrt(tl.sum(t_sq, axis=0)), eps)
    s_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, C, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        s = tl.load(S + offs, mask=offs < C, other=0.0) * t_scale
        s_sq += s * s
    s_norm = tl.sqrt(tl.sum(s_sq, axis=0))
    s_scale = t_scale / tl.maximum(s_norm, eps)
    tl.store(SIGMA, s_norm * s_norm / tl.maximum(s_norm, eps))
    for start in range(0, R, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        u = (tl.load(T + offs, mask=offs < R, other=0.0) * t_scale).to(U.dtype.element_ty)
        tl.store(U + offs, u, mask=offs < R)
        if COPIES:
            tl.store(U_USED + offs, u, mask=offs < R)
    for start in range(0, C, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = (tl.load(S + offs, mask=offs < C, other=0.0) * s_scale).to(V.dtype.element_ty)
        tl.store(V + offs, v, mask=offs < C)
        if COPIES:
            tl.store(V_USED + offs, v, mask=offs < C)


@triton.jit
def _sn_finish_kernel(T, S, U, V, U_USED, V_USED, SIGMA, R, C, eps, BLOCK: tl.constexpr):
    # One program: the new u, v and sigma, and copies of u, v for the backward.
    _finish_power_iteration(T, S, U, V, U_USED, V_USED, SIGMA, R, C, eps, BLOCK, True)


# Grouped power iteration: every SN layer of a model in three launches (rows, columns, finish)
# instead of three per layer. Each layer's tensors are reached through tables of their addresses;
# a program of the rows or columns pass finds its (layer, block) in per-program tables.
GROUP_ROWS_BLOCK = (16, 256)  # (BLOCK_R, BLOCK_C) of the rows pass: t = W v
GROUP_COLUMNS_BLOCK = (128, 64)  # of the columns pass: s = W^T t
GROUP_ROWS_WARPS = 4
GROUP_COLUMNS_WARPS = 8  # 4 spill in float16 on sm_80 (the compile check)


@triton.jit
def _layer_pointer(TABLE, layer, TYPED):
    """The address stored in TABLE[layer], as a pointer of TYPED's type."""
    return tl.load(TABLE + layer).to(TYPED.dtype)


@triton.jit
def _sn_group_rows_kernel(
    W_PTRS,
    V_PTRS,
    ROWS,
    COLS,
    T_OFFSETS,
    PROGRAM_LAYER,
    PROGRAM_BLOCK,
    T,
    W_TYPED,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # t = W v for one block of rows of one layer; every layer's t in the flat float32 T.
    layer, block = tl.load(PROGRAM_LAYER + tl.program_id(0)), tl.load(PROGRAM_BLOCK + tl.program_id(0))
    R, C = tl.load(ROWS + layer), tl.load(COLS + layer)
    W, V = _layer_pointer(W_PTRS, layer, W_TYPED), _layer_pointer(V_PTRS, layer, W_TYPED)
    rows = block * BLOCK_R + tl.arange(0, BLOCK_R)
    tl.store(
        T + tl.load(T_OFFSETS + layer) + rows, _rows_times_vector(W, V, rows, R, C, BLOCK_R, BLOCK_C), mask=rows < R
    )


@triton.jit
def _sn_group_cols_kernel(
    W_PTRS,
    ROWS,
    COLS,
    T_OFFSETS,
    S_OFFSETS,
    PROGRAM_LAYER,
    PROGRAM_BLOCK,
    T,
    S,
    W_TYPED,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # s = W^T t for one block of columns of one layer; every layer's s in the flat float32 S.
    layer, block = tl.load(PROGRAM_LAYER + tl.program_id(0)), tl.load(PROGRAM_BLOCK + tl.program_id(0))
    R, C = tl.load(ROWS + layer), tl.load(COLS + layer)
    W = _layer_pointer(W_PTRS, layer, W_TYPED)
    cols = block * BLOCK_C + tl.arange(0, BLOCK_C)
    s = _columns_times_vector(W, T + tl.load(T_OFFSETS + layer), cols, R, C, BLOCK_R, BLOCK_C)
    tl.store(S + tl.load(S_OFFSETS + layer) + cols, s, mask=cols < C)


@triton.jit
def _sn_group_finish_kernel(
    U_PTRS, V_PTRS, SIGMA_PTRS, ROWS, COLS, T_OFFSETS, S_OFFSETS, T, S, W_TYPED, SIGMA_TYPED, eps, BLOCK: tl.constexpr
):
    # One program per layer: its new u, v (in place) and sigma.
    layer = tl.program_id(0)
    U, V = _layer_pointer(U_PTRS, layer, W_TYPED), _layer_pointer(V_PTRS, layer, W_TYPED)
    SIGMA = _layer_pointer(SIGMA_PTRS, layer, SIGMA_TYPED)
    T_LAYER, S_LAYER = T + tl.load(T_OFFSETS + layer), S + tl.load(S_OFFSETS + layer)
    _finish_power_iteration(
        T_LAYER, S_LAYER, U, V, U, V, SIGMA, tl.load(ROWS + layer), tl.load(COLS + layer), eps, BLOCK, False
    )


@triton.jit
def _sn_scale_kernel(W, SIGMA, OUT, N, BLOCK: tl.constexpr):
    # W_sn = W / sigma, elementwise over the flat weight.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    w = tl.load(W + offs, mask=offs < N, other=0.0)
    inv_sigma = 1.0 / tl.load(SIGMA)
    tl.store(OUT + offs, (w.to(tl.float32) * inv_sigma).to(OUT.dtype.element_ty), mask=offs < N)


@triton.jit
def _sn_grad_dot_kernel(G, W, PARTIAL, N, BLOCK: tl.constexpr):
    # Reduction pass: partial sums of <G, W> (divided by sigma later: <G, W_sn> = <G, W> / sigma).
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    g = tl.load(G + offs, mask=offs < N, other=0.0).to(tl.float32)
    w = tl.load(W + offs, mask=offs < N, other=0.0).to(tl.float32)
    tl.store(PARTIAL + tl.program_id(0), tl.sum(g * w, axis=0))


@triton.jit
def _sn_grad_write_kernel(G, U, V, G_DOT_WSN, SIGMA, DW, N, C, BLOCK: tl.constexpr):
    # Write pass: dW = (G - <G, W_sn> u v^T) / sigma, elementwise over the flat [R, C] weight.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    g = tl.load(G + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(U + offs // C, mask=ok, other=0.0).to(tl.float32)
    v = tl.load(V + offs % C, mask=ok, other=0.0).to(tl.float32)
    inv_sigma = 1.0 / tl.load(SIGMA)
    dw = (g - tl.load(G_DOT_WSN) * u * v) * inv_sigma
    tl.store(DW + offs, dw.to(DW.dtype.element_ty), mask=ok)


# ---- launches ------------------------------------------------------------------------------------


def rows_launch(w: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> None:
    """t = w v in float32."""
    R, C = w.shape
    launch(_sn_rows_kernel, lambda meta: (triton.cdiv(R, meta["BLOCK_R"]),), w, v, t, R, C)


def power_iteration_launch(
    w: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    n_power_iterations: int,
    eps: float,
    u_used: torch.Tensor,
    v_used: torch.Tensor,
    sigma: torch.Tensor,
) -> None:
    """The power method on the contiguous matrix w, updating u and v in place; writes sigma and copies of u, v."""
    R, C = w.shape
    t = torch.empty(R, device=w.device, dtype=torch.float32)
    s = torch.empty(C, device=w.device, dtype=torch.float32)
    for _ in range(n_power_iterations):
        rows_launch(w, v, t)
        launch(_sn_cols_kernel, lambda meta: (triton.cdiv(C, meta["BLOCK_C"]),), w, t, s, R, C)
        launch(_sn_finish_kernel, (1,), t, s, u, v, u_used, v_used, sigma, R, C, eps, BLOCK=FINISH_BLOCK)


@dataclass(frozen=True)
class _GroupTables:
    """What the grouped kernels need beyond the tensors: addresses, sizes and the program maps."""

    pointers: torch.Tensor  # int64 (4, L): addresses of each layer's W, u, v, sigma
    sizes: torch.Tensor  # int64 (4, L): rows, columns, offset of t in T, offset of s in S
    row_programs: torch.Tensor  # int32 (2, P_rows): layer and block of each rows-pass program
    column_programs: torch.Tensor  # int32 (2, P_cols)
    total_rows: int
    total_cols: int


_group_tables_cache: dict[tuple, _GroupTables] = {}


def _program_map(lengths: list[int], block: int) -> list[list[int]]:
    pairs = [(layer, b) for layer, n in enumerate(lengths) for b in range(triton.cdiv(n, block))]
    return [[layer for layer, _ in pairs], [b for _, b in pairs]]


def _group_tables(
    weights: list[torch.Tensor], us: list[torch.Tensor], vs: list[torch.Tensor], sigmas: list[torch.Tensor]
) -> _GroupTables:
    """Built once per set of tensors (parameters and buffers keep their storage), then reused: no
    host-to-device copy on later calls. Meta tensors (the compile check) get tables of the right shapes."""
    device = weights[0].device
    rows, cols = [w.shape[0] for w in weights], [w.shape[1] for w in weights]
    meta = device.type == "meta"
    addresses = [[0] * len(weights) if meta else [t.data_ptr() for t in group] for group in (weights, us, vs, sigmas)]
    key = (str(device), tuple(rows), tuple(cols), *map(tuple, addresses))
    tables = _group_tables_cache.get(key)
    if tables is None:
        t_offsets = [sum(rows[:i]) for i in range(len(rows))]
        s_offsets = [sum(cols[:i]) for i in range(len(cols))]
        tables = _GroupTables(
            torch.tensor(addresses, dtype=torch.int64, device=device),
            torch.tensor([rows, cols, t_offsets, s_offsets], dtype=torch.int64, device=device),
            torch.tensor(_program_map(rows, GROUP_ROWS_BLOCK[0]), dtype=torch.int32, device=device),
            torch.tensor(_program_map(cols, GROUP_COLUMNS_BLOCK[1]), dtype=torch.int32, device=device),
            sum(rows),
            sum(cols),
        )
        if not meta:
            _group_tables_cache[key] = tables
    return tables


def power_iteration_grouped_launch(
    weights: list[torch.Tensor],
    us: list[torch.Tensor],
    vs: list[torch.Tensor],
    sigmas: list[torch.Tensor],
    n_power_iterations: int,
    eps: float,
) -> None:
    """The power method on every contiguous matrix of `weights` (one dtype), updating each u and v
    in place and writing each 0-d sigma (one dtype): three launches per iteration for all layers."""
    tables = _group_tables(weights, us, vs, sigmas)
    w_ptrs, u_ptrs, v_ptrs, sigma_ptrs = tables.pointers
    rows, cols, t_offsets, s_offsets = tables.sizes
    t = torch.empty(tables.total_rows, device=weights[0].device, dtype=torch.float32)
    s = torch.empty(tables.total_cols, device=weights[0].device, dtype=torch.float32)
    w_typed = weights[0]  # typed pointer for the addresses in the tables
    shapes = (rows, cols, t_offsets)
    row_args = (w_ptrs, v_ptrs, *shapes, *tables.row_programs, t, w_typed)
    column_args = (w_ptrs, *shapes, s_offsets, *tables.column_programs, t, s, w_typed)
    finish_args = (u_ptrs, v_ptrs, sigma_ptrs, *shapes, s_offsets, t, s, w_typed, sigmas[0], eps)
    row_blocks = {"BLOCK_R": GROUP_ROWS_BLOCK[0], "BLOCK_C": GROUP_ROWS_BLOCK[1], "num_warps": GROUP_ROWS_WARPS}
    column_blocks = {
        "BLOCK_R": GROUP_COLUMNS_BLOCK[0],
        "BLOCK_C": GROUP_COLUMNS_BLOCK[1],
        "num_warps": GROUP_COLUMNS_WARPS,
    }
    for _ in range(n_power_iterations):
        launch(_sn_group_rows_kernel, (tables.row_programs.shape[1],), *row_args, **row_blocks)
        launch(_sn_group_cols_kernel, (tables.column_programs.shape[1],), *column_args, **column_blocks)
        launch(_sn_group_finish_kernel, (len(weights),), *finish_args, BLOCK=FINISH_BLOCK)


def scale_launch(w: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> None:
    """out = w / sigma."""
    n = w.numel()
    launch(_sn_scale_kernel, (triton.cdiv(n, ELEMENTWISE_BLOCK),), w, sigma, out, n, BLOCK=ELEMENTWISE_BLOCK)


def scale_backward_launch(
    grad: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, grad_w: torch.Tensor
) -> None:
    """grad_w = (grad - <grad, w / sigma> u v^T) / sigma."""
    n, programs = w.numel(), triton.cdiv(w.numel(), ELEMENTWISE_BLOCK)
    partial = torch.empty(programs, device=w.device, dtype=torch.float32)
    launch(_sn_grad_dot_kernel, (programs,), grad, w, partial, n, BLOCK=ELEMENTWISE_BLOCK)
    grad_dot_wsn = partial.sum() / sigma
    launch(
        _sn_grad_write_kernel,
        (programs,),
        grad,
        u,
        v,
        grad_dot_wsn,
        sigma,
        grad_w,
        n,
        w.shape[1],
        BLOCK=ELEMENTWISE_BLOCK,
    )


# ---- torch.library ops --------------------------------------------------------------------------


@torch.library.triton_op("tritonsagan::power_iteration_and_sigma", mutates_args=("u", "v"))
def _power_iteration_and_sigma(
    w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_power_iterations: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Power iterations updating u, v in place; returns sigma (float32, 0-d) and copies of the final u, v."""
    sigma = torch.empty((), device=w.device, dtype=torch.float32)
    u_used, v_used = torch.empty_like(u), torch.empty_like(v)
    power_iteration_launch(w, u, v, n_power_iterations, eps, u_used, v_used, sigma)
    return sigma, u_used, v_used


@torch.library.triton_op("tritonsagan::sn_sigma", mutates_args=())
def _sn_sigma(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sigma = u^T W v without touching u, v (eval mode)."""
    t = torch.empty(w.shape[0], device=w.device, dtype=torch.float32)
    rows_launch(w, v, t)
    return torch.dot(u.float(), t)


@torch.library.triton_op("tritonsagan::sn_scale", mutates_args=())
def _sn_scale(
    w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """W / sigma, written in out_dtype (default: w's); u, v are kept for the backward."""
    out = torch.empty(w.shape, device=w.device, dtype=out_dtype or w.dtype)
    scale_launch(w, sigma, out)
    return out


@torch.library.triton_op("tritonsagan::sn_scale_backward", mutates_args=())
def _sn_scale_backward(
    grad: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    grad_w = torch.empty_like(w)
    scale_backward_launch(grad.contiguous(), w, u, v, sigma, grad_w)
    return grad_w


def _sn_scale_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:4])


def _sn_scale_grad(ctx, grad):
    # grad comes in out_dtype; the kernel reads it as it is and writes dW in w's dtype.
    w, u, v, sigma = ctx.saved_tensors
    return torch.ops.tritonsagan.sn_scale_backward(grad, w, u, v, sigma), None, None, None, None


_sn_scale.register_autograd(_sn_scale_grad, setup_context=_sn_scale_setup_context)
