"""Learning: the SAGAN trained class-conditionally on the built-in photos at 64x64 (each photo a
class), measured at fixed steps: photo_match of G and of G_ema (tritonsagan.photo_match), the fixed
pattern of both (tritonsagan.fixed_pattern: the frames and grids at the same place in every image),
KID of G_ema against real crops (with the FID Inception when installed; the report names the
network), D's mean logits, the losses and the training wall-clock.

The recipe (RECIPE) is the package's own TrainConfig defaults at 64x64 with a small width; it runs on
the device it finds, about 30 minutes on two CPU cores. `figure` draws the curves, with a peer's
figures beside them when given (a JSON of {"name", "rows": [{"step", "photo_match_g", and optionally
"fixed_pattern_g"}]}), and `comparison_markdown` tabulates several runs (one change each, and the
peer's):

    python -m tritonsagan.bench.learning REPORT.json [--peer PEER.json ...] --out learning.png
    python -m tritonsagan.bench.learning --table REPORT.json ... PEER.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
import typing
from collections.abc import Callable
from pathlib import Path

import torch
from rich.table import Table

from tritonsagan.data.builtin import BUILTIN_PHOTOS
from tritonsagan.errors import ConfigError, TritonsaganError
from tritonsagan.feature_network import EvalError, FeatureNetwork, extract_features, find_feature_weights
from tritonsagan.fixed_pattern import fixed_pattern
from tritonsagan.generate import generate
from tritonsagan.images import make_grid, save_image
from tritonsagan.metrics import kernel_inception_distance
from tritonsagan.photo_match import FRESH_SEED, IMAGES_PER_CLASS, fresh_crops_photo_match, photo_match, reference_crops
from tritonsagan.train_config import TrainConfig
from tritonsagan.training_run import TrainingRun

from .cells import number, table

# The training run measured: the package's defaults but for these (no DiffAugment, as the peer runs).
RECIPE = {
    "data": "builtin",
    "conditional": True,
    "image_size": 64,
    "ch": 16,
    "batch_size": 16,
    "diffaug": "",
    "ema_start": 200,
    "ema_decay": 0.99,
}
STEPS, EVERY = 2000, 250
QUICK = {"ch": 8, "batch_size": 4}
QUICK_STEPS, QUICK_EVERY = 4, 2
KID_PER_CLASS = 20  # generated images per class for KID, and as many real crops (17 photos: 340)
KID_SUBSETS = 100
KID_REAL_SEED, KID_FRESH_SEED, GENERATE_SEED = 2, 3, 0


class KidProbe:
    """KID of a generator's images against real crops, on the FID feature network when one is found."""

    def __init__(self, image_size: int, per_class: int, device: torch.device) -> None:
        try:
            self.network: FeatureNetwork | None = FeatureNetwork(find_feature_weights(), device)
        except EvalError as err:
            self.network, self.missing = None, str(err)
            return
        self.n = per_class * len(BUILTIN_PHOTOS)
        self.real = self._features(reference_crops(self.n, KID_REAL_SEED, image_size)[0])
        self.real_vs_real = self.kid(self._features(reference_crops(self.n, KID_FRESH_SEED, image_size)[0]))

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        assert self.network is not None
        return extract_features(self.network, images.split(50), -(-len(images) // 50), "features", progress=False)[0]

    def kid(self, features: torch.Tensor) -> float:
        return kernel_inception_distance(self.real, features, KID_SUBSETS, len(features), seed=0)[0]

    def generator_kid(self, generator: torch.nn.Module) -> float:
        classes = list(range(generator.config.num_classes))
        return self.kid(self._features(generate(generator, self.n, classes=classes, seed=GENERATE_SEED)))

    def describe(self) -> dict:
        if self.network is None:
            return {"network": None, "why_no_kid": self.missing}
        return {
            "network": self.network.name,
            "network_sha256": self.network.sha256,
            "kid_n": self.n,
            "kid_real_vs_real": self.real_vs_real,
        }


BOOLEANS = {"true": True, "on": True, "1": True, "false": False, "off": False, "0": False}


def parse_overrides(items: list[str]) -> dict:
    """["class_bn_init=identity", "lr_d=2e-4"] -> TrainConfig fields, each value typed as the field is."""
    types = typing.get_type_hints(TrainConfig)
    overrides = {}
    for item in items:
        name, equals, value = item.partition("=")
        if name not in types or not equals:
            raise ConfigError(
                f"--learning-set {item}: expected FIELD=VALUE with a TrainConfig field (e.g. class_bn_init=identity)"
            )
        kind = types[name]
        if kind in (bool, bool | None):
            if value.lower() not in BOOLEANS:
                raise ConfigError(f"--learning-set {item}: {name} takes one of {', '.join(BOOLEANS)}")
            overrides[name] = BOOLEANS[value.lower()]
            continue
        try:
            overrides[name] = kind(value)
        except ValueError:
            raise ConfigError(f"--learning-set {item}: {value!r} is not a {kind.__name__}") from None
    return overrides


def run(
    device: torch.device,
    quick: bool = False,
    overrides: dict | None = None,
    steps: int | None = None,
    every: int | None = None,
    kid: bool = True,
    samples: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train RECIPE (with `overrides`, TrainConfig fields) for `steps`, measuring every `every` steps;
    with `samples`, G_ema's grid (a row per class) at each measured step is written there."""
    steps, every = steps or (QUICK_STEPS if quick else STEPS), every or (QUICK_EVERY if quick else EVERY)
    recipe = {**RECIPE, **(QUICK if quick else {}), **(overrides or {})}
    with tempfile.TemporaryDirectory(prefix="tritonsagan-learning-") as out:
        cfg = TrainConfig(
            out=out, device=str(device), steps=steps, workers=1, sample_every=steps, save_every=steps, **recipe
        )
        training = TrainingRun(cfg)
        try:
            return _measure(training, every, kid, samples, log, recipe)
        finally:
            training.release()


def _measure(
    training: TrainingRun, every: int, kid: bool, samples: Path | None, log: Callable[[str], None], recipe: dict
) -> dict:
    cfg = training.cfg
    reference = reference_crops(image_size=cfg.image_size)
    probe = KidProbe(cfg.image_size, KID_PER_CLASS, training.world.device) if kid else None
    section = {
        "recipe": {
            k: v
            for k, v in dataclasses.asdict(cfg).items()
            if k in {*recipe, "lr_g", "lr_d", "beta1", "beta2", "init", "bias_init", "class_bn_init", "d_sn_in_g_step"}
        },
        "fresh_crops_photo_match": fresh_crops_photo_match(reference)["accuracy"],
        "fixed_pattern_real": fixed_pattern(
            reference_crops(IMAGES_PER_CLASS * len(reference[2]), FRESH_SEED, cfg.image_size)[0]
        ),
        **(probe.describe() if probe else {}),
        "rows": [],
    }
    classes = list(range(len(reference[2])))
    labels = torch.arange(len(classes)).repeat_interleave(IMAGES_PER_CLASS)
    seconds = 0.0
    while training.step < cfg.steps:
        sums = dict.fromkeys(("loss_d", "loss_g", "d_real", "d_fake"), 0.0)
        start, first = time.perf_counter(), training.step
        while training.step < min(cfg.steps, first + every):
            out = training.take_step()
            for key in sums:
                sums[key] += float(out[key])
        seconds += time.perf_counter() - start
        if not all(map(math.isfinite, sums.values())):
            raise TritonsaganError(f"learning benchmark: a loss became NaN or Inf by step {training.step}")
        G_ema = training.ema_generator()
        generated = {
            name: generate(model, len(labels), classes=classes, seed=GENERATE_SEED)
            for name, model in (("g", training.G), ("g_ema", G_ema))
        }
        training.G.train()  # generate left it in eval mode
        row: dict = {"step": training.step}
        for name, images in generated.items():
            row[f"photo_match_{name}"] = photo_match(images, labels, reference)["accuracy"]
            row[f"fixed_pattern_{name}"] = fixed_pattern(images)
        row["kid"] = probe.generator_kid(G_ema) if probe and probe.network else None
        row.update({key: value / (training.step - first) for key, value in sums.items()}, seconds=seconds)
        section["rows"].append(row)
        if samples is not None:  # a row per class
            save_image(
                make_grid(generated["g_ema"], columns=IMAGES_PER_CLASS), samples / f"step_{training.step:07d}_ema.png"
            )
        kid_text = f", KID {row['kid']:.4f}" if row["kid"] is not None else ""
        log(
            f"learning: step {row['step']}: photo_match G {row['photo_match_g']:.2f}, G_ema {row['photo_match_g_ema']:.2f}{kid_text}; "
            f"fixed pattern G_ema {row['fixed_pattern_g_ema']:.2f}; D real {row['d_real']:+.2f}, fake {row['d_fake']:+.2f}; {seconds:.0f} s"
        )
    return section


def results_table(section: dict) -> Table:
    network = section.get("network") or "no feature network: " + section.get("why_no_kid", "")
    title = (
        f"learning (fresh real crops: photo_match {section['fresh_crops_photo_match']:.2f}, "
        f"fixed pattern {section['fixed_pattern_real']:.2f}; KID: {network})"
    )
    result = table(
        title,
        (
            "step",
            "photo_match G",
            "photo_match G_ema",
            "fixed pattern G_ema",
            "KID G_ema",
            "D real",
            "D fake",
            "loss D",
            "loss G",
            "seconds",
        ),
    )
    for r in section["rows"]:
        result.add_row(
            str(r["step"]),
            f"{r['photo_match_g']:.2f}",
            f"{r['photo_match_g_ema']:.2f}",
            f"{r['fixed_pattern_g_ema']:.2f}",
            number(r["kid"]),
            f"{r['d_real']:+.2f}",
            f"{r['d_fake']:+.2f}",
            f"{r['loss_d']:.2f}",
            f"{r['loss_g']:.2f}",
            f"{r['seconds']:.0f}",
        )
    return result


def figure(section: dict, peers: list[dict], path: Path) -> Path:
    """photo_match and the fixed pattern of G and G_ema by step (each peer run's G beside them), and KID
    of G_ema, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = section["rows"]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 3.6), dpi=100)

    def curves(axes, metric: str) -> None:
        """Each run's `metric` at the steps it has one (reports older than a metric lack it)."""
        lines = [(rows, "g_ema", "o-", "C0", "tritonsagan G_ema"), (rows, "g", "s--", "C1", "tritonsagan G")]
        for peer, marker in zip(peers, "^v<>"):
            seed = peer.get("settings", {}).get("seed")
            lines.append(
                (
                    peer["rows"],
                    "g",
                    f"{marker}:",
                    "grey",
                    f"{peer['name']} G" + (f", seed {seed}" if seed is not None else ""),
                )
            )
        for run_rows, model, style, colour, label in lines:
            measured = [(r["step"], r[f"{metric}_{model}"]) for r in run_rows if f"{metric}_{model}" in r]
            if measured:
                axes.plot(*zip(*measured), style, color=colour, label=label)

    curves(left, "photo_match")
    left.axhline(section["fresh_crops_photo_match"], color="green", lw=0.8, label="fresh real crops")
    left.axhline(1 / 17, color="red", lw=0.8, label="chance")
    left.set(xlabel="step", ylabel="photo_match", ylim=(0, 1), title="class-conditional, built-in photos, 64x64")
    left.legend(fontsize=7, loc="lower right")
    curves(middle, "fixed_pattern")
    if "fixed_pattern_real" in section:
        middle.axhline(section["fixed_pattern_real"], color="green", lw=0.8, label="fresh real crops")
    middle.set(
        xlabel="step", ylabel="fixed pattern", ylim=(0, None), title="frames and grids at the same place in every image"
    )
    middle.legend(fontsize=7)
    kids = [(r["step"], r["kid"]) for r in rows if r["kid"] is not None]
    if kids:
        right.plot(*zip(*kids), "o-", label="tritonsagan G_ema")
        right.axhline(section["kid_real_vs_real"], color="green", lw=0.8, label="real vs real")
        right.set(
            xlabel="step", ylabel="KID", title=f"KID to real crops (n={section['kid_n']})"
        )  # linear: real vs real is near 0, either side
        right.legend(fontsize=7)
    else:
        right.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


TABLE_STEPS = (500, 1000, 1500)
PATTERN_STEP = 1000  # by when the frames of early training should have faded


def changes_from_recipe(section: dict) -> str:
    """What a run's recipe changed from RECIPE over today's TrainConfig defaults, e.g. "init=orthogonal"."""
    defaults = {**dataclasses.asdict(TrainConfig()), **RECIPE}
    changed = [f"{k}={v}" for k, v in section["recipe"].items() if defaults.get(k) != v]
    return ", ".join(changed) or "none"


def comparison_markdown(runs: list[tuple[str, dict]]) -> str:
    """A row per run: photo_match of G (and of G_ema) at TABLE_STEPS, the fixed pattern of G and G_ema
    at PATTERN_STEP (the header gives real crops' from the first report that has it), D's mean logits
    at the last of TABLE_STEPS. A run is a report with a learning section, or a peer's figures ({name,
    rows}); other reports are left out."""
    sections = [(name, run.get("learning", run)) for name, run in runs]
    sections = [
        (name, section) for name, section in sections if "rows" in section
    ]  # others are reports of other sections
    real = next(
        (
            f" (real crops {section['fixed_pattern_real']:.2f})"
            for _, section in sections
            if "fixed_pattern_real" in section
        ),
        "",
    )
    steps = " / ".join(map(str, TABLE_STEPS))
    lines = [
        f"| run | changed from the recipe | photo_match G at {steps} | G_ema at {steps} | fixed pattern G / G_ema at {PATTERN_STEP}{real} | D real / fake at {TABLE_STEPS[-1]} |",
        "|---|---|---|---|---|---|",
    ]
    for name, section in sections:
        by_step = {row["step"]: row for row in section["rows"]}

        def cells(key: str, at: tuple[int, ...] = TABLE_STEPS) -> str:
            return " / ".join(
                f"{by_step[step][key]:.2f}" if step in by_step and key in by_step[step] else "-" for step in at
            )

        last = by_step.get(TABLE_STEPS[-1], {})
        logits = f"{last['d_real']:+.2f} / {last['d_fake']:+.2f}" if "d_real" in last else "-"
        pattern = f"{cells('fixed_pattern_g', (PATTERN_STEP,))} / {cells('fixed_pattern_g_ema', (PATTERN_STEP,))}"
        changed = changes_from_recipe(section) if "recipe" in section else "(peer)"
        if "initial_weights" in section:  # a run started from weights made elsewhere (e.g. a peer's initialisation)
            changed += f"; started from {section['initial_weights']}"
        lines.append(
            f"| `{name}` | {changed} | {cells('photo_match_g')} | {cells('photo_match_g_ema')} | {pattern} | {logits} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tritonsagan.bench.learning",
        description="Learning reports: their curves, or a table of several.",
    )
    parser.add_argument(
        "reports",
        nargs="+",
        help="tritonsagan-bench JSON reports with a learning section (or, with --table, a peer's figures)",
    )
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        help="a JSON of a peer's figures, drawn beside the report's: {name, rows: [{step, photo_match_g, fixed_pattern_g (optional)}]} (repeatable, up to 4)",
    )
    parser.add_argument("--out", help="the PNG of the first report's curves")
    parser.add_argument("--table", action="store_true", help="print a markdown table of every report instead")
    args = parser.parse_args(argv)
    runs = [(Path(path).name, json.loads(Path(path).read_text())) for path in args.reports]
    if args.table:
        print(comparison_markdown(runs))
        return 0
    name, report = runs[0]
    if "learning" not in report or not args.out:
        print(f"{name}: needs a learning section (tritonsagan-bench --only learning) and --out", file=sys.stderr)
        return 2
    if len(args.peer) > 4:
        print(f"--peer: at most 4 peer runs, got {len(args.peer)}", file=sys.stderr)
        return 2
    peers = [json.loads(Path(path).read_text()) for path in args.peer]
    print(f"wrote {figure(report['learning'], peers, Path(args.out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
