"""Spectral normalisation with the exact semantics of torch.nn.utils.parametrizations.spectral_norm.

The weight is viewed as a matrix W = weight.flatten(1) of shape [out, in*kh*kw]. In training mode
each call runs `n_power_iterations` steps of the power method in place, in torch's order
(u = normalize(W v), then v = normalize(W^T u)); sigma = u^T W v and the result is W / sigma,
with the gradient flowing through W only (u and v are constants):
    dL/dW = (G - <G, W_sn> u v^T) / sigma,   G = dL/dW_sn.

Two paths, both checked against torch's parametrization by the tests:
- `spectral_norm_torch`: plain torch, the CPU path.
- `spectral_norm_triton`: fused Triton kernels (`spectral_norm_kernels`), the CUDA path. torch's
  parametrization reads W four times per training forward (W v, W^T u, W v again for sigma, the
  division); here an iteration is one pass for t = W v and one for s = W^T t, and since
  v = normalize(W^T u), sigma = u^T W v = ||W^T u|| comes for free, so the forward is three reads
  of W and one write of W_sn.
`spectral_norm` picks the Triton path for CUDA tensors and the torch path otherwise.

Grouped (a model's tuning switch): `power_iteration_grouped` refreshes u, v and sigma of every
layer of a model at once (on the Triton path three launches in all, instead of three per layer),
then each layer takes `spectral_norm_after_update`, which divides without updating again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._triton_support import HAS_TRITON, check_triton_device, triton_offered
from .backend import selected_backend

if HAS_TRITON:
    from . import spectral_norm_kernels  # registers the tritonsagan::power_iteration_and_sigma and sn_* triton_ops

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
        raise ValueError(
            f"spectral_norm: weight, u, v must be on one device, got {weight.device}, {u.device}, {v.device}"
        )


def _triton_path(weight: torch.Tensor) -> bool:
    backend = selected_backend()
    return backend == "triton" or (backend == "auto" and weight.is_cuda and triton_offered(weight))


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes in on this device type, or None outside autocast."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def power_iteration_torch(
    w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_power_iterations: int, eps: float
) -> None:
    for _ in range(n_power_iterations):
        u.copy_(F.normalize(torch.mv(w, v), dim=0, eps=eps))
        v.copy_(F.normalize(torch.mv(w.t(), u), dim=0, eps=eps))


# An opaque custom op rather than in-graph copy_: with the in-place update decomposed into the graph,
# inductor (seen on torch 2.13 CPU) computes dL/dW as if u depended on W, off by ~1e-3 relative.
@torch.library.custom_op("tritonsagan::power_iteration", mutates_args=("u", "v"))
def power_iteration(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_power_iterations: int, eps: float) -> None:
    """In-place power method on the matrix w, in torch's order: u = normalize(W v), v = normalize(W^T u).
    Returns nothing; the Triton path's `power_iteration_and_sigma` also returns sigma and copies of u, v."""
    with torch.no_grad():
        power_iteration_torch(w, u, v, n_power_iterations, eps)


@torch.library.custom_op("tritonsagan::power_iteration_grouped", mutates_args=("us", "vs", "sigmas"))
def power_iteration_grouped(
    weights: list[torch.Tensor],
    us: list[torch.Tensor],
    vs: list[torch.Tensor],
    sigmas: list[torch.Tensor],
    n_power_iterations: int,
    eps: float,
) -> None:
    """`power_iteration` of many contiguous matrices at once, also writing each sigma = u^T W v
    into a 0-d tensor: the grouped Triton kernels where the Triton path runs, else a loop.
    Opaque to torch.compile, like `power_iteration`, and chosen at run time."""
    for w, u, v, sigma in zip(weights, us, vs, sigmas, strict=True):
        check_spectral_norm_inputs(w, u, v, n_power_iterations)
        if (
            w.ndim != 2
            or not w.is_contiguous()
            or w.dtype != weights[0].dtype
            or sigma.shape != ()
            or sigma.dtype != sigmas[0].dtype
        ):
            raise ValueError(
                f"power_iteration_grouped: needs contiguous matrices of one dtype and 0-d sigmas of one dtype, got weight "
                f"{tuple(w.shape)} {w.dtype} (contiguous: {w.is_contiguous()}), sigma {tuple(sigma.shape)} {sigma.dtype}"
            )
    if not weights:
        return
    if _triton_path(weights[0]):
        check_triton_device("power_iteration_grouped", weights[0])
        spectral_norm_kernels.power_iteration_grouped_launch(weights, us, vs, sigmas, n_power_iterations, eps)
        return
    with torch.no_grad():
        for w, u, v, sigma in zip(weights, us, vs, sigmas):
            power_iteration_torch(w, u, v, n_power_iterations, eps)
            sigma.copy_(torch.dot(u, torch.mv(w, v)))


@torch.no_grad()
def init_spectral_norm_vectors(weight: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Random unit u, v refined by 15 power iterations, as torch does at construction."""
    w = weight.detach().flatten(1)
    u = F.normalize(w.new_empty(w.shape[0]).normal_(0, 1), dim=0, eps=eps)
    v = F.normalize(w.new_empty(w.shape[1]).normal_(0, 1), dim=0, eps=eps)
    if not w.is_meta:  # a model built on the meta device for its shapes: no values to refine, only dispatch cost
        power_iteration_torch(w, u, v, INIT_POWER_ITERATIONS, eps)
    return u, v


def spectral_norm_torch(
    weight: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    training: bool = True,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """weight / sigma(weight), in out_dtype (default: weight's); in training mode u and v are
    first updated in place."""
    check_spectral_norm_inputs(weight, u, v, n_power_iterations)
    if weight.ndim == 1:
        return F.normalize(weight, dim=0, eps=eps)
    w = weight.flatten(1)
    if training:
        power_iteration(w.detach(), u, v, n_power_iterations, eps)
    # Clones: autograd must not see the buffers' later in-place updates (e.g. D(real) then D(fake)).
    u_const, v_const = u.clone(), v.clone()
    sigma = torch.dot(u_const, torch.mv(w, v_const))
    return (weight / sigma).to(out_dtype or weight.dtype)


def spectral_norm_triton(
    weight: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    training: bool = True,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`spectral_norm_torch` by fused Triton kernels, with autograd (CUDA, or CPU under TRITON_INTERPRET=1).

    float32, float16 or bfloat16 weights; u and v share the weight's dtype; sums in float32; the
    result is written in out_dtype directly (e.g. the autocast dtype, sparing autocast's cast).
    """
    check_spectral_norm_inputs(weight, u, v, n_power_iterations)
    check_triton_device("spectral_norm_triton", weight)
    if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"spectral_norm_triton: dtype must be float32, float16 or bfloat16, got {weight.dtype}")
    if weight.ndim == 1:
        return F.normalize(weight, dim=0, eps=eps)
    w = weight.flatten(1).contiguous()
    if training:
        sigma, u_used, v_used = torch.ops.tritonsagan.power_iteration_and_sigma(
            w.detach(), u, v, n_power_iterations, eps
        )
    else:
        sigma = torch.ops.tritonsagan.sn_sigma(w.detach(), u, v)
        u_used, v_used = u.clone(), v.clone()  # the backward must not see later in-place updates
    return torch.ops.tritonsagan.sn_scale(w, u_used, v_used, sigma, out_dtype).view_as(weight)


def spectral_norm(
    weight: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    training: bool = True,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Spectral normalisation: the Triton kernels for CUDA tensors, the torch path otherwise."""
    if _triton_path(weight):
        return spectral_norm_triton(weight, u, v, n_power_iterations, eps, training, out_dtype)
    return spectral_norm_torch(weight, u, v, n_power_iterations, eps, training, out_dtype)


def spectral_norm_after_update(
    weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """weight / sigma for a weight whose u, v and sigma `power_iteration_grouped` refreshed in this
    training forward: the same result as `spectral_norm(..., training=True)` had it updated them itself."""
    if _triton_path(weight):
        check_triton_device("spectral_norm_after_update", weight)
        # Clones: the backward must not see the next forward's in-place updates.
        return torch.ops.tritonsagan.sn_scale(
            weight.flatten(1).contiguous(), u.clone(), v.clone(), sigma.clone(), out_dtype
        ).view_as(weight)
    return spectral_norm_torch(weight, u, v, training=False, out_dtype=out_dtype)
