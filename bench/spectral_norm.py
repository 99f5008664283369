"""Spectral norm per layer shape of G and D: our fused Triton kernels vs torch's parametrization."""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn
from rich.table import Table
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm
from tritonsagan.kernels import init_spectral_norm_vectors, spectral_norm_torch, spectral_norm_triton
from tritonsagan.kernels._triton_support import triton_can_run
from tritonsagan.models import Discriminator, Generator
from tritonsagan.models.layers import SpectralNormMixin

from .cells import number, ratio, table
from .timing import median_ms

# Implementation names, as rows and reports spell them.
FUSED = "triton fused"
PARAMETRIZATION = "torch parametrization"
TORCH_PATH = "torch path (ours)"


def layer_shapes(ch: int, num_classes: int) -> Counter:
    """Weight shape -> how many SN layers of G and D have it."""
    shapes: Counter = Counter()
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        models = (Generator(ch=ch, num_classes=num_classes), Discriminator(ch=ch, num_classes=num_classes))
    for model in models:
        shapes.update(tuple(m.weight.shape) for m in model.modules() if isinstance(m, SpectralNormMixin))
    return shapes


class _Holder(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)


def _contenders(weight: torch.Tensor) -> dict[str, tuple | None]:
    """name -> (forward fn, the tensor gradients flow to); None where it cannot run."""
    torch_layer = torch_spectral_norm(_Holder(weight.clone()))
    ours = weight.clone().requires_grad_()
    u, v = init_spectral_norm_vectors(ours)
    triton_ok = weight.is_cuda and triton_can_run(weight)
    return {
        FUSED: (lambda: spectral_norm_triton(ours, u, v), ours) if triton_ok else None,
        PARAMETRIZATION: (lambda: torch_layer.weight, torch_layer.parametrizations.weight.original),
        TORCH_PATH: (lambda: spectral_norm_torch(ours, u, v), ours),
    }


def run(device: torch.device, quick: bool = False) -> list[dict]:
    on_cuda = device.type == "cuda"
    ch = 64 if on_cuda else (16 if quick else 32)
    shapes = layer_shapes(ch, num_classes=1000)
    if quick:
        shapes = Counter(dict(shapes.most_common(4)))
    rows = []
    for shape, count in sorted(shapes.items(), key=lambda item: -torch.Size(item[0]).numel()):
        weight = torch.randn(shape, device=device) * 0.05
        grad = torch.randn(shape, device=device)
        for name, contender in _contenders(weight).items():
            row = {"shape": list(shape), "layers": count, "impl": name}
            if contender is None:
                rows.append({**row, "available": False})
                continue
            forward, source = contender
            row["fwd_ms"] = median_ms(forward, device, quick)
            row["fwd_bwd_ms"] = median_ms(lambda: torch.autograd.grad(forward(), source, grad), device, quick)
            rows.append({**row, "available": True})
    return rows


def totals(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per implementation: time summed over every SN layer of G and D (shape time x layer count)."""
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["available"]:
            entry = out.setdefault(row["impl"], {"fwd_ms": 0.0, "fwd_bwd_ms": 0.0})
            entry["fwd_ms"] += row["fwd_ms"] * row["layers"]
            entry["fwd_bwd_ms"] += row["fwd_bwd_ms"] * row["layers"]
    return out


def results_table(rows: list[dict], totals: dict) -> Table:
    out = table(
        f"Spectral norm, training forward + backward (speed-up vs {PARAMETRIZATION})",
        ("weight shape", "layers", "impl", "fwd ms", "fwd+bwd ms", "vs torch"),
    )
    torch_times = {tuple(r["shape"]): r.get("fwd_bwd_ms") for r in rows if r["impl"] == PARAMETRIZATION}
    for r in rows:
        if not r["available"]:
            out.add_row(str(tuple(r["shape"])), str(r["layers"]), r["impl"], "n/a", "-", "-")
            continue
        out.add_row(
            str(tuple(r["shape"])),
            str(r["layers"]),
            r["impl"],
            number(r["fwd_ms"]),
            number(r["fwd_bwd_ms"]),
            ratio(torch_times.get(tuple(r["shape"])), r["fwd_bwd_ms"]),
        )
    base = totals.get(PARAMETRIZATION, {}).get("fwd_bwd_ms")
    for impl, total in totals.items():
        out.add_row(
            "all layers of G and D",
            "",
            impl,
            number(total["fwd_ms"]),
            number(total["fwd_bwd_ms"]),
            ratio(base, total["fwd_bwd_ms"]),
        )
    return out


SUMMARY_HEADER = "SN fwd+bwd ms, all layers of G and D: fused / torch"


def summary_cell(totals: dict) -> str:
    fused, parametrization = (totals.get(name, {}).get("fwd_bwd_ms") for name in (FUSED, PARAMETRIZATION))
    return f"{number(fused, 'n/a')} / {number(parametrization, 'n/a')}"
