"""Spectral normalisation with the exact semantics of torch.nn.utils.parametrizations.spectral_norm.

The weight is viewed as a matrix W = weight.flatten(1) of shape [out, in*kh*kw]. In training mode
each call runs `n_power_iterations` steps of the power method in place, in torch's order
(u = normalize(W v), then v = normalize(W^T u)); sigma = u^T W v and the result is W / sigma,
with the gradient flowing through W only (u and v are constants):
    dL/dW = (G - <G, W_sn> u v^T) / sigma,   G = dL/dW_sn.

Two paths:
- `spectral_norm_reference`: plain torch, the CPU implementation and the tests' reference.
- `spectral_norm_triton`: fused Triton kernels. torch's parametrization reads W four times per
  training forward (W v, W^T u, W v again for sigma, the division); here an iteration is one pass
  for t = W v and one for s = W^T t, and since v = normalize(W^T u), sigma = u^T W v = ||W^T u||
  comes for free, so the forward is three reads of W and one write of W_sn.
`spectral_norm` picks the Triton path for CUDA tensors and the torch path otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._triton_support import INTERPRET, check_triton_device, tl, triton, triton_can_run
from .backend import selected_backend

INIT_POWER_ITERATIONS = 15


def check_spectral_norm_inputs(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_power_iterations: int) -> None:
    """Raise a ValueError that names what does not fit."""
    if not weight.is_floating_point():
        raise ValueError(f"spectral_norm: weight must be floating point, got {weight.dtype}")
    if n_power_iterations < 1:
        raise ValueError(f"spectral_norm: n_power_iterations must be positive, got {n_power_iterations}")
    if weight.ndim < 2:
        return  # 1-D weights are just normalised, like torch does; u and v are unused
    rows, cols = weight.shape[0], weight[0].numel()
    if u.shape != (rows,) or v.shape != (cols,):
        raise ValueError(
            f"spectral_norm: weight {tuple(weight.shape)} (matrix [{rows}, {cols}]) needs u ({rows},) and v ({cols},),"
            f" got u {tuple(u.shape)} and v {tuple(v.shape)}"
        )
    if u.dtype != weight.dtype or v.dtype != weight.dtype:
        raise ValueError(f"spectral_norm: u, v ({u.dtype}, {v.dtype}) must have the weight's dtype {weight.dtype}")
    if u.device != weight.device or v.device != weight.device:
        raise ValueError(f"spectral_norm: weight, u, v must be on one device, got {weight.device}, {u.device}, {v.device}")


def _power_iteration(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_power_iterations: int, eps: float) -> None:
    for _ in range(n_power_iterations):
        u.copy_(F.normalize(torch.mv(w, v), dim=0, eps=eps))
        v.copy_(F.normalize(torch.mv(w.t(), u), dim=0, eps=eps))


# An opaque custom op rather than in-graph copy_: with the in-place update decomposed into the graph,
# inductor (seen on torch 2.13 CPU) computes dL/dW as if u depended on W, off by ~1e-3 relative.
@torch.library.custom_op("tritonsagan::power_iteration", mutates_args=("u", "v"))
def power_iteration_(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_power_iterations: int, eps: float) -> None:
    """In-place power method on the matrix w, in torch's order: u = normalize(W v), v = normalize(W^T u)."""
    with torch.no_grad():
        _power_iteration(w, u, v, n_power_iterations, eps)


@torch.no_grad()
def init_spectral_norm_vectors(weight: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Random unit u, v refined by 15 power iterations, as torch does at construction."""
    w = weight.detach().flatten(1)
    u = F.normalize(w.new_empty(w.shape[0]).normal_(0, 1), dim=0, eps=eps)
    v = F.normalize(w.new_empty(w.shape[1]).normal_(0, 1), dim=0, eps=eps)
    _power_iteration(w, u, v, INIT_POWER_ITERATIONS, eps)
    return u, v


def spectral_norm_reference(
    weight: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    training: bool = True,
) -> torch.Tensor:
    """weight / sigma(weight); in training mode u and v are first updated in place."""
    check_spectral_norm_inputs(weight, u, v, n_power_iterations)
    if weight.ndim == 1:
        return F.normalize(weight, dim=0, eps=eps)
    w = weight.flatten(1)
    if training:
        power_iteration_(w.detach(), u, v, n_power_iterations, eps)
    # Clones: autograd must not see the buffers' later in-place updates (e.g. D(real) then D(fake)).
    u_const, v_const = u.clone(), v.clone()
    sigma = torch.dot(u_const, torch.mv(w, v_const))
    return weight / sigma




# ----------------------------------------------------------------------------------------------
# Triton kernels. W is the contiguous [R, C] matrix; all sums accumulate in float32.
# ----------------------------------------------------------------------------------------------

if triton is not None:

    def _configs(pairs, **single):
        if INTERPRET:  # one config: the interpreter would otherwise "time" each on the CPU
            return [triton.Config(single)]
        return [triton.Config(dict(zip(single, p)), num_warps=w) for p in pairs for w in (4, 8)]

    @triton.autotune(
        configs=_configs([(8, 512), (16, 256), (32, 128), (64, 128), (4, 1024)], BLOCK_R=64, BLOCK_C=256),
        key=["R", "C"],
    )
    @triton.jit
    def _sn_rows_kernel(W, V, T, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        # t = W v: one program per block of rows, streaming across the columns.
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        acc = tl.zeros([BLOCK_R], dtype=tl.float32)
        for start in range(0, C, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            w = tl.load(W + rows[:, None] * C + cols[None, :], mask=(rows[:, None] < R) & (cols[None, :] < C), other=0.0)
            v = tl.load(V + cols, mask=cols < C, other=0.0)
            acc += tl.sum(w.to(tl.float32) * v.to(tl.float32)[None, :], axis=1)
        tl.store(T + rows, acc, mask=rows < R)

    @triton.autotune(
        configs=_configs([(256, 32), (128, 64), (64, 128), (512, 16)], BLOCK_R=256, BLOCK_C=64),
        key=["R", "C"],
    )
    @triton.jit
    def _sn_cols_kernel(W, T, S, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        # s = W^T t: one program per block of columns, streaming down the rows.
        cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for start in range(0, R, BLOCK_R):
            rows = start + tl.arange(0, BLOCK_R)
            w = tl.load(W + rows[:, None] * C + cols[None, :], mask=(rows[:, None] < R) & (cols[None, :] < C), other=0.0)
            t = tl.load(T + rows, mask=rows < R, other=0.0)
            acc += tl.sum(w.to(tl.float32) * t[:, None], axis=0)
        tl.store(S + cols, acc, mask=cols < C)

    @triton.jit
    def _sn_finish_kernel(T, S, U, V, U_USED, V_USED, SIGMA, R, C, eps, BLOCK: tl.constexpr):
        # One program. With t = W v and s = W^T t from the two passes:
        #   u = t / max(||t||, eps);  W^T u = s / max(||t||, eps);  v = W^T u / max(||W^T u||, eps)
        #   sigma = u^T W v = ||W^T u||^2 / max(||W^T u||, eps)
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
            tl.store(U_USED + offs, u, mask=offs < R)
        for start in range(0, C, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            v = (tl.load(S + offs, mask=offs < C, other=0.0) * s_scale).to(V.dtype.element_ty)
            tl.store(V + offs, v, mask=offs < C)
            tl.store(V_USED + offs, v, mask=offs < C)

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


FINISH_BLOCK = 1024
ELEMENTWISE_BLOCK = 16384 if INTERPRET else 2048


def _power_iteration_launch(
    w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_power_iterations: int, eps: float,
    u_used: torch.Tensor, v_used: torch.Tensor, sigma: torch.Tensor,
) -> None:
    """Run the power method on the contiguous matrix w, updating u and v in place; write sigma and copies of u, v."""
    R, C = w.shape
    t = torch.empty(R, device=w.device, dtype=torch.float32)
    s = torch.empty(C, device=w.device, dtype=torch.float32)
    wrap = torch.library.wrap_triton
    for _ in range(n_power_iterations):
        wrap(_sn_rows_kernel)[lambda meta: (triton.cdiv(R, meta["BLOCK_R"]),)](w, v, t, R, C)
        wrap(_sn_cols_kernel)[lambda meta: (triton.cdiv(C, meta["BLOCK_C"]),)](w, t, s, R, C)
        wrap(_sn_finish_kernel)[(1,)](t, s, u, v, u_used, v_used, sigma, R, C, eps, BLOCK=FINISH_BLOCK)


def _scale_launch(w: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> None:
    n = w.numel()
    torch.library.wrap_triton(_sn_scale_kernel)[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](w, sigma, out, n, BLOCK=ELEMENTWISE_BLOCK)


def _scale_backward_launch(
    grad: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, grad_w: torch.Tensor
) -> None:
    n, programs = w.numel(), triton.cdiv(w.numel(), ELEMENTWISE_BLOCK)
    partial = torch.empty(programs, device=w.device, dtype=torch.float32)
    torch.library.wrap_triton(_sn_grad_dot_kernel)[(programs,)](grad, w, partial, n, BLOCK=ELEMENTWISE_BLOCK)
    grad_dot_wsn = partial.sum() / sigma
    torch.library.wrap_triton(_sn_grad_write_kernel)[(programs,)](
        grad, u, v, grad_dot_wsn, sigma, grad_w, n, w.shape[1], BLOCK=ELEMENTWISE_BLOCK
    )


@torch.library.triton_op("tritonsagan::sn_power_iteration", mutates_args=("u", "v"))
def _sn_power_iteration(
    w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_power_iterations: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """In-place power iteration; returns sigma (float32, 0-d) and copies of the final u, v."""
    sigma = torch.empty((), device=w.device, dtype=torch.float32)
    u_used, v_used = torch.empty_like(u), torch.empty_like(v)
    _power_iteration_launch(w, u, v, n_power_iterations, eps, u_used, v_used, sigma)
    return sigma, u_used, v_used


@torch.library.triton_op("tritonsagan::sn_sigma", mutates_args=())
def _sn_sigma(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sigma = u^T W v without touching u, v (eval mode)."""
    R, C = w.shape
    t = torch.empty(R, device=w.device, dtype=torch.float32)
    torch.library.wrap_triton(_sn_rows_kernel)[lambda meta: (triton.cdiv(R, meta["BLOCK_R"]),)](w, v, t, R, C)
    return torch.dot(u.float(), t)


@torch.library.triton_op("tritonsagan::sn_scale", mutates_args=())
def _sn_scale(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(w)
    _scale_launch(w, sigma, out)
    return out


@torch.library.triton_op("tritonsagan::sn_scale_backward", mutates_args=())
def _sn_scale_backward(grad: torch.Tensor, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    grad_w = torch.empty_like(w)
    _scale_backward_launch(grad.contiguous(), w, u, v, sigma, grad_w)
    return grad_w


def _sn_scale_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _sn_scale_grad(ctx, grad):
    w, u, v, sigma = ctx.saved_tensors
    return torch.ops.tritonsagan.sn_scale_backward(grad, w, u, v, sigma), None, None, None


_sn_scale.register_autograd(_sn_scale_grad, setup_context=_sn_scale_setup_context)


def spectral_norm_triton(
    weight: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    training: bool = True,
) -> torch.Tensor:
    """`spectral_norm_reference` by fused Triton kernels, with autograd (CUDA, or CPU under TRITON_INTERPRET=1).

    float32, float16 or bfloat16 weights; u and v share the weight's dtype; sums in float32.
    """
    check_spectral_norm_inputs(weight, u, v, n_power_iterations)
    check_triton_device("spectral_norm_triton", weight)
    if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"spectral_norm_triton: dtype must be float32, float16 or bfloat16, got {weight.dtype}")
    if weight.ndim == 1:
        return F.normalize(weight, dim=0, eps=eps)
    w = weight.flatten(1).contiguous()
    if training:
        sigma, u_used, v_used = torch.ops.tritonsagan.sn_power_iteration(w.detach(), u, v, n_power_iterations, eps)
    else:
        sigma = torch.ops.tritonsagan.sn_sigma(w.detach(), u, v)
        u_used, v_used = u.clone(), v.clone()  # the backward must not see later in-place updates
    return torch.ops.tritonsagan.sn_scale(w, u_used, v_used, sigma).view_as(weight)


def spectral_norm(
    weight: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    training: bool = True,
) -> torch.Tensor:
    """Spectral normalisation: the Triton kernels for CUDA tensors, the torch path otherwise."""
    backend = selected_backend()
    if backend == "triton" or (backend == "auto" and weight.is_cuda and triton_can_run(weight)):
        return spectral_norm_triton(weight, u, v, n_power_iterations, eps, training)
    return spectral_norm_reference(weight, u, v, n_power_iterations, eps, training)
