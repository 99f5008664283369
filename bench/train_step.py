"""The full training step (G and D, hinge loss, Adam, EMA) at 128x128, images per second.

(a) the port-style reference: bmm + softmax attention and torch spectral norm, eager, float32;
(a') (a) under the same bf16 autocast and TF32 as (d): the reference at equal precision;
(b) our kernels, eager; (c) our kernels under torch.compile; (d) (c) with bf16 autocast;
(e), (f): (c), (d) with DiffAugment (color, translation, cutout), its cost;
(d+...): (d) with one tuning switch (TrainConfig fields, off by default) or all of them;
(b+channels_last): (b) with channels_last, the CPU's default.
All are our own TrainingStep (tritonsagan.step), switched between kernel backends and options.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from rich.table import Table
from tritonsagan.kernels import use_backend
from tritonsagan.models import Discriminator, Generator
from tritonsagan.models.config import IMAGE_CHANNELS, IMAGE_SIZE

from tritonsagan.errors import ConfigError
from tritonsagan.step import TrainingStep
from tritonsagan.train_config import TrainConfig

from .cells import number, ratio, table
from .timing import median_ms, peak_extra_bytes

FULL_DIFFAUG = "color,translation,cutout"


@dataclass(frozen=True)
class Variant:
    id: str
    name: str
    backend: str = "auto"  # kernels.use_backend
    compile: bool = True
    bf16: bool = True
    tf32: bool = True  # TF32 for the float32 matmuls and convolutions autocast leaves
    diffaug: str = ""
    tuning: dict = field(default_factory=dict)  # TrainConfig fields


VARIANTS = [
    Variant("a", "port-style reference", backend="naive", compile=False, bf16=False, tf32=False),
    Variant("a'", "port-style reference, bf16 + TF32", backend="naive", compile=False),
    Variant("b", "ours, eager", compile=False, bf16=False, tf32=False),
    Variant("c", "ours, compiled", bf16=False, tf32=False),
    Variant("d", "ours, compiled + bf16"),
    Variant("e", "(c) + DiffAugment", bf16=False, tf32=False, diffaug=FULL_DIFFAUG),
    Variant("f", "(d) + DiffAugment", diffaug=FULL_DIFFAUG),
]
TUNINGS = {  # (d) plus each switch
    "channels_last": {"channels_last": True},
    "fused_adam": {"fused_adam": True},
    "grouped_sn": {"grouped_sn": True},
    "sn_autocast_dtype": {"sn_autocast_dtype": True},
    "fused_qkv": {"fused_qkv": True},
    "compile_scope_step": {"compile_scope": "step"},
    "max_autotune": {"compile_mode": "max-autotune"},
    "reduce_overhead": {"compile_mode": "reduce-overhead"},
}
ALL_SWITCHES = {
    key: value for tuning in TUNINGS.values() if "compile_mode" not in tuning for key, value in tuning.items()
}
VARIANTS += [Variant(f"d+{name}", f"(d) + {name}", tuning=tuning) for name, tuning in TUNINGS.items()]
VARIANTS.append(Variant("d+all", "(d) + every switch but the compile mode", tuning=ALL_SWITCHES))
# The CPU's default memory format (train_config.resolve_config) beside (b), where (d) has no CPU path.
VARIANTS.append(
    Variant(
        "b+channels_last", "(b) + channels_last", compile=False, bf16=False, tf32=False, tuning=TUNINGS["channels_last"]
    )
)
VARIANT_IDS = [v.id for v in VARIANTS]
VARIANT_GROUPS = {  # --variants may name a group, to run the variants in several commands
    "core": [v.id for v in VARIANTS if not v.tuning],
    "switches": [
        f"d+{name}" for name in ("channels_last", "fused_adam", "grouped_sn", "sn_autocast_dtype", "fused_qkv")
    ],
    "compile": ["d+compile_scope_step", "d+max_autotune", "d+reduce_overhead", "d+all"],
}


def select_variants(spec: str | None) -> list[Variant]:
    """All variants, or a comma list of ids and group names (core, switches, compile)."""
    if not spec:
        return VARIANTS
    wanted = []
    for name in (part.strip() for part in spec.split(",") if part.strip()):
        if name not in VARIANT_GROUPS and name not in VARIANT_IDS:
            raise ConfigError(
                f"--variants: unknown variant {name!r}; ids: {', '.join(VARIANT_IDS)}; groups: {', '.join(VARIANT_GROUPS)}"
            )
        wanted += VARIANT_GROUPS.get(name, [name])
    return [v for v in VARIANTS if v.id in wanted]


@contextlib.contextmanager
def _tf32(allowed: bool) -> Iterator[None]:
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def flops_per_image(ch: int) -> float:
    """FLOPs of one D step and one G step per image (torch's FLOP counter on meta tensors): D on
    real and fake forward and backward, G forward without grad for the D step, G and D forward and
    backward for the G step. Attention counted as bmm + softmax, the FLOPs any implementation does."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        G, D = Generator(ch=ch), Discriminator(ch=ch)
        z, images = torch.randn(1, G.config.z_dim), torch.randn(2, IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    counter = FlopCounterMode(display=False)
    with use_backend("naive"), counter:
        with torch.no_grad():
            G(z)
        D(images).sum().backward()  # D step: real and fake
        D(G(z)).sum().backward()  # G step
    return float(counter.get_total_flops())


def run(device: torch.device, floor: dict, quick: bool = False, variants: list[Variant] | None = None) -> list[dict]:
    """A row per variant: step time, images/s, and the fraction of the device floor's FLOP/s it reaches."""
    on_cuda = device.type == "cuda"
    ch, batch = (64, 64 if quick else 256) if on_cuda else ((8, 4) if quick else (16, 8))
    flops = flops_per_image(ch)
    rows = []
    for variant in variants or VARIANTS:
        row = {"id": variant.id, "variant": f"({variant.id}) {variant.name}", "ch": ch, "batch": batch}
        row.update(backend=variant.backend, compile=variant.compile, bf16=variant.bf16, tf32=variant.tf32)
        row.update(diffaug=variant.diffaug, tuning=variant.tuning)
        if variant.bf16 and not on_cuda:
            rows.append({**row, "available": False, "reason": "bf16 autocast is a CUDA path"})
            continue
        try:
            ms, peak = _time_step(variant, device, ch, batch, quick)
        except Exception as err:  # out of memory, or a compile mode this torch refuses: reported, not fatal
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
            rows.append({**row, "available": False, "reason": reason})
            continue
        images_per_s = batch / (ms * 1e-3)
        pct_of_floor = 100 * images_per_s * flops / floor["flops_per_s"]
        rows.append({**row, "available": True, "step_ms": ms, "images_per_s": images_per_s, "peak_extra_bytes": peak})
        rows[-1].update(flops_per_image=flops, pct_of_floor=pct_of_floor)
    return rows


def _time_step(variant: Variant, device: torch.device, ch: int, batch: int, quick: bool) -> tuple[float, int | None]:
    """The median time of one training step of `variant` (ms) and its peak extra memory (bytes)."""
    on_cuda = device.type == "cuda"
    cfg = TrainConfig(
        ch=ch,
        batch_size=batch,
        compile=variant.compile,
        precision="bf16" if variant.bf16 else "fp32",
        diffaug=variant.diffaug,
        workers=0,
        device=str(device),
        **{"channels_last": False, **variant.tuning},  # off unless the variant switches it on, on every device
    )
    with _tf32(variant.tf32 and on_cuda):
        try:
            training_step = TrainingStep.fresh(cfg, device=str(device))
            real = torch.rand(batch, IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE, device=device) * 2 - 1
            steps = itertools.count()

            def step():
                with use_backend(variant.backend):
                    training_step(next(steps), [(real, None)])

            return median_ms(step, device, quick), peak_extra_bytes(step, device)
        finally:
            if on_cuda:
                torch._dynamo.reset()  # each variant compiles afresh; free the last one's graphs
                torch.cuda.empty_cache()


def merge_rows(earlier: list[dict], later: list[dict]) -> list[dict]:
    """One row per variant, `later`'s where both have it, in the variants' order."""
    rows = {r["id"]: r for r in earlier + later}
    return [rows[i] for i in VARIANT_IDS if i in rows]


def results_table(rows: list[dict]) -> Table:
    out = table(
        "Training step at 128x128 (speed-up vs the port-style reference, at float32 (a) and at equal precision (a'))",
        ("variant", "ch", "batch", "step ms", "images/s", "% floor", "peak MiB", "vs (a)", "vs (a')"),
    )
    base = {r["id"]: r.get("step_ms") for r in rows if r["id"] in ("a", "a'") and r["available"]}
    for r in rows:
        if not r["available"]:
            out.add_row(r["variant"], str(r["ch"]), str(r["batch"]), "n/a", r.get("reason", "-"), *["-"] * 4)
            continue
        peak = r["peak_extra_bytes"] / 2**20 if r["peak_extra_bytes"] is not None else None
        out.add_row(
            r["variant"],
            str(r["ch"]),
            str(r["batch"]),
            number(r["step_ms"]),
            number(r["images_per_s"]),
            number(r["pct_of_floor"]),
            number(peak),
            ratio(base.get("a"), r["step_ms"]),
            ratio(base.get("a'"), r["step_ms"]),
        )
    return out


SUMMARY_VARIANTS = [*VARIANT_GROUPS["core"], "b+channels_last"]
SUMMARY_HEADER = "train step images/s: " + " / ".join(f"({i})" for i in SUMMARY_VARIANTS)


def summary_cell(rows: list[dict]) -> str:
    """images/s of the core variants and the CPU's default, at the report's width and batch: n/a where
    the device has no such path, - where the report did not run it."""
    if not rows:
        return "-"
    by_id = {r["id"]: r for r in rows}
    speeds = [
        "-" if i not in by_id else number(by_id[i]["images_per_s"]) if by_id[i]["available"] else "n/a"
        for i in SUMMARY_VARIANTS
    ]
    return f"ch {rows[0]['ch']}, batch {rows[0]['batch']}: {' / '.join(speeds)}"
