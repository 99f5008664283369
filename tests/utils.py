"""Helpers shared by the tests."""

from __future__ import annotations

import torch


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (NaN anywhere gives NaN, which fails any bound)."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """softmax(scale q k^T) v materialised in float64: the ground truth for every attention path."""
    return torch.softmax(scale * q.double() @ k.double().transpose(1, 2), dim=-1) @ v.double()
