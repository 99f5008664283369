"""The project's speed targets, checked against a report: met, or missed and by how much.

Attention (fwd+bwd, G and D shapes, batch >= 64): >= 2x the best SDPA backend, >= 1.3x
FlexAttention (compiled), >= 4x bmm + softmax, within 2x of the device floor, extra memory linear in
N. Fused spectral norm: >= 2x torch's parametrization summed over all layers. Compiled bf16
training step (d): >= 1.5x the images/s of the port-style reference at equal precision (a'), and
>= 2,000 images/s at ch 64, batch 256 (one H100). Data: the image-folder stream's per-sample cost
at 200,000 files within 1.2x of its cost at 100 files; a packed dataset through the DataLoader at
10,000 images/s or more.
A target whose numbers are not in the report (no Triton or no bf16 on this device) is
"not measured", never "met".
"""

from __future__ import annotations

from rich.table import Table

from . import attention, data, spectral_norm
from .cells import number, table

MIN_TARGET_BATCH = 64
TARGET_STEP_WIDTH, TARGET_STEP_BATCH = 64, 256  # the paper's recipe, where the images/s target applies


def _target(name: str, required: float, measured: float | None, detail: str, at_most: bool = False) -> dict:
    """A target `measured >= required` (or `<=` with at_most), and how far off it is when missed."""
    if measured is None:
        met, status = None, "not measured"
    else:
        met = measured <= required if at_most else measured >= required
        shortfall = measured / required if at_most else required / measured
        status = "met" if met else f"missed by {shortfall:.2f}x"
    bound = "at most" if at_most else "at least"
    return {
        "target": name,
        "required": f"{bound} {required:g}",
        "measured": measured,
        "met": met,
        "status": status,
        "detail": detail,
    }


def _attention_targets(rows: list[dict]) -> list[dict]:
    out = []
    for shape in attention.SMALL_SHAPES:
        cases = {}
        for r in rows:
            if r["shape"] == shape and r["batch"] >= MIN_TARGET_BATCH and r["available"]:
                cases.setdefault(r["batch"], {})[r["impl"]] = r
        # The weakest batch decides: the target holds at batch 64 and up.
        vs_sdpa, vs_flex, vs_naive, of_floor = [], [], [], []
        for _batch, impls in sorted(cases.items()):
            ours = impls.get(attention.TRITON)
            if ours is None:
                continue
            sdpa = [r["fwd_bwd_ms"] for name, r in impls.items() if name.startswith(attention.SDPA)]
            if sdpa:
                vs_sdpa.append(min(sdpa) / ours["fwd_bwd_ms"])
            if attention.FLEX in impls:
                vs_flex.append(impls[attention.FLEX]["fwd_bwd_ms"] / ours["fwd_bwd_ms"])
            if attention.NAIVE in impls:
                vs_naive.append(impls[attention.NAIVE]["fwd_bwd_ms"] / ours["fwd_bwd_ms"])
            of_floor.append(ours["fwd_bwd_pct_of_floor"] / 100)
        detail = f"{shape}, fwd+bwd, batch >= {MIN_TARGET_BATCH}, worst batch"
        out.append(
            _target(f"attention {shape}: speed-up over the best SDPA backend", 2.0, min(vs_sdpa, default=None), detail)
        )
        out.append(
            _target(
                f"attention {shape}: speed-up over FlexAttention (compiled)", 1.3, min(vs_flex, default=None), detail
            )
        )
        out.append(_target(f"attention {shape}: speed-up over bmm + softmax", 4.0, min(vs_naive, default=None), detail))
        out.append(
            _target(f"attention {shape}: fraction of the device floor", 0.5, min(of_floor, default=None), detail)
        )
    return out + [_memory_target(rows)]


def _memory_target(rows: list[dict]) -> dict:
    """D at 32x32 and G at 64x64 share d_qk = 16 and d_v = 64 and differ 4x in N_q and N_k: linear
    extra memory grows about 4x between them, a materialised N_q x N_k matrix 16x."""
    peaks: dict[tuple[str, int], int] = {}
    for r in rows:
        if r["impl"] == attention.TRITON and r["available"] and r.get("peak_extra_bytes"):
            peaks[(r["shape"], r["batch"])] = r["peak_extra_bytes"]
    ratios = [
        peaks[("G 64x64", b)] / peaks[("D 32x32", b)]
        for (shape, b) in peaks
        if shape == "G 64x64" and ("D 32x32", b) in peaks
    ]
    return _target(
        "attention extra memory: growth for 4x N (linear ~4, quadratic ~16)",
        4.5,
        max(ratios, default=None),
        "triton peak extra memory, G 64x64 over D 32x32 at the same batch",
        at_most=True,
    )


def evaluate_targets(report: dict) -> list[dict]:
    targets = _attention_targets(report.get("attention", []))
    totals = report.get("spectral_norm", {}).get("totals", {})
    fused, torch_sn = totals.get(spectral_norm.FUSED), totals.get(spectral_norm.PARAMETRIZATION)
    sn_speedup = torch_sn["fwd_bwd_ms"] / fused["fwd_bwd_ms"] if fused and torch_sn else None
    targets.append(
        _target(
            "spectral norm: fused speed-up over torch's parametrization",
            2.0,
            sn_speedup,
            "fwd+bwd summed over all SN layers of G and D",
        )
    )
    steps = {r["id"]: r for r in report.get("train_step", []) if r["available"]}
    compiled = steps.get("d")
    speedup = compiled["images_per_s"] / steps["a'"]["images_per_s"] if compiled and "a'" in steps else None
    targets.append(
        _target(
            "training step: compiled bf16 (d) over the port-style reference at equal precision (a')",
            1.5,
            speedup,
            "images/s, same device and batch, both bf16 autocast + TF32",
        )
    )
    at_recipe = (
        compiled if compiled and (compiled["ch"], compiled["batch"]) == (TARGET_STEP_WIDTH, TARGET_STEP_BATCH) else None
    )
    targets.append(
        _target(
            f"training step: compiled bf16 (d) images/s at ch {TARGET_STEP_WIDTH}, batch {TARGET_STEP_BATCH}",
            2000.0,
            at_recipe and at_recipe["images_per_s"],
            "one GPU (the target is for an H100)",
        )
    )
    return targets + _data_targets(report.get("data"))


def _data_targets(section: dict | None) -> list[dict]:
    """The folder stream's per-sample cost must not grow with the folder; a packed dataset must feed a GPU."""
    folder = {r["files"]: r["ms_per_sample"] for r in section["folder"]} if section else {}
    growth = folder[max(folder)] / folder[min(folder)] if len(folder) > 1 else None
    packed = data.best_packed_images_per_s(section) if section else None
    return [
        _target(
            "data: folder stream per-sample cost, 200,000 files over 100 files",
            1.2,
            growth,
            "same JPEG, consecutive samples",
            at_most=True,
        ),
        _target(
            "data: packed dataset through the DataLoader, images/s",
            10_000.0,
            packed,
            "batch 256, flips, best worker count",
        ),
    ]


def results_table(targets: list[dict]) -> Table:
    out = table("Targets", ("target", "required", "measured", "status"))
    for t in targets:
        out.add_row(t["target"], t["required"], number(t["measured"]), t["status"])
    return out
