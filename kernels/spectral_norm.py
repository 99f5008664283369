"""Spectral normalisation with the exact semantics of torch.nn.utils.parametrizations.spectral_norm.

The weight is viewed as a matrix W = weight.flatten(1) of shape [out, in*kh*kw]. In training mode
each call runs `n_power_iterations` steps of the power method in place, in torch's order
(u = normalize(W v), then v = normalize(W^T u)); sigma = u^T W v and the result is W / sigma,
with the gradient flowing through W only (u and v are constants).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
@torch.library.custom_op("tritonsagan::power_iteration_", mutates_args=("u", "v"))
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


def spectral_norm(
    weight: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    training: bool = True,
) -> torch.Tensor:
    """Spectral normalisation dispatched by device (see `spectral_norm_reference`)."""
    return spectral_norm_reference(weight, u, v, n_power_iterations, eps, training)
