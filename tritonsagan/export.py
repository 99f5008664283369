"""tritonsagan-export: a training run's G_ema as a folder to share or ship, with its model card.

    tritonsagan-export RUN --out FOLDER [--checkpoint PATH] [--name NAME] [--kid-n N]
                       [--curve PNG [--curve-every N] [--beside CARD.json ...]]

The folder holds what save_pretrained writes (model.safetensors, G_ema in float16, and config.json),
which load_generator and `tritonsagan-generate --weights FOLDER` read; README.md, its model card; and
card.json, the card's figures. Every figure is read from the run or measured here on the exported
float16 weights:

- from the run (config_history.jsonl, metrics.jsonl): the data, steps, batch, learning rates and
  EMA, and which of them a resume changed; the device of each start or resume; the training
  wall-clock, each process's steps over its last logged images/s (the steps kept: work lost to a
  kill and done again is not counted);
- photo_match (tritonsagan.photo_match), when the run trained class-conditionally on the built-in
  photos;
- KID of --kid-n generated images (every class in turn) against as many real images of the run's
  data, drawn as training draws them, beside KID of as many other real images against the same ones:
  what a perfect generator scores at that n. On the FID feature network, which the card names; where
  none is found, the card says so;
- fixed_pattern (tritonsagan.fixed_pattern) of the generated images beside the real ones: frames and
  grids that every image repeats;
- photo_variety (tritonsagan.photo_variety), with photo_match: whether each class draws its photo the
  many ways training showed it or one way whatever the latent.

With --curve PNG, the same figures of G_ema at every checkpoint the run kept (with --curve-every N,
at those a multiple of N steps in, and the exported one): its learning curve, kept in card.json and
drawn in that picture, with --beside the curves of other exports' card.json drawn in the same panels
(the run before a change, say).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from tritonsagan.models import Generator
from tritonsagan.models.pretrained import WEIGHTS_NAME

from .atomic_write import atomic_write_bytes, atomic_write_json
from .checkpoint import list_checkpoints, read_sidecar
from .cli import resolve_device, run_command
from .config_flags import REQUIRED, add_config_argument, add_config_flags, build_config, config_field
from .curves import read_metrics
from .data import ImageStream, make_dataset
from .errors import ConfigError
from .feature_network import EvalError, FeatureNetwork, extract_features, find_feature_weights
from .fixed_pattern import fixed_pattern
from .generate import generate
from .metrics import kernel_inception_distance
from .model_card import RECIPE_SETTINGS, curve_figure, model_card, require_matplotlib
from .photo_match import generator_photo_match, reference_crops
from .photo_variety import generator_photo_variety
from .run_directory import RunDirectory, generator_from_checkpoint
from .shared_fields import device_field, fid_weights_field
from .shipped import CARD_FIGURES_NAME, MODEL_CARD_NAME

KID_N = 340  # 20 images of each of the 17 built-in photos
REAL_SEED = 1  # the real images' stream: other crops than a training stream of the default seed (0) draws
GENERATE_SEED = 0
FEATURE_BATCH = 50


def training_segments(run: RunDirectory, up_to: int) -> list[dict]:
    """One entry per start or resume of the run that trained steps up to `up_to`: {"from", "to",
    "device", "seconds"}, seconds from the process's last logged images/s (the rate since it started)."""
    history = run.read_config_history()
    records = [r for r in read_metrics(run.root) if "images_per_s" in r and r["step"] <= up_to]
    segments = []
    for k, start in enumerate(history):
        end = history[k + 1]["step"] if k + 1 < len(history) else up_to
        logged = [r for r in records if start["step"] < r["step"] <= end]
        if not logged:
            continue
        last = logged[-1]
        images = (last["step"] - start["step"]) * start["config"]["batch_size"]
        segments.append(
            {
                "from": start["step"],
                "to": last["step"],
                "device": start.get("device", "not recorded"),
                "seconds": images / last["images_per_s"],
            }
        )
    return segments


def run_settings(run: RunDirectory, up_to: int) -> tuple[dict, list[dict]]:
    """The run's config as it trained the steps before `up_to` (its last start or resume before them),
    and the changes to training settings (model_card.RECIPE_SETTINGS) that resumes made before then:
    [{"step", "changed": {name: [old, new]}}], oldest first."""
    history = run.read_config_history()
    before = [record for record in history if record["step"] < up_to] or history[:1]
    changes = []
    for record in before[1:]:
        changed = {name: values for name, values in record["changed"].items() if name in RECIPE_SETTINGS}
        if changed:
            changes.append({"step": record["step"], "changed": changed})
    return before[-1]["config"], changes


def _real_images(dataset: ImageStream, start: int, n: int) -> torch.Tensor:
    """Images start .. start + n of the stream."""
    loader = DataLoader(Subset(dataset, range(start, start + n)), batch_size=FEATURE_BATCH)
    return torch.cat([images for images, _, _ in loader])


class Measurer:
    """The figures of generators trained on one run's data, its real images read (and their
    features computed) once: photo_match and photo_variety on the built-in photos, KID on kid_n
    images (0: none), the fixed pattern."""

    def __init__(
        self, config: dict, image_size: int, kid_n: int, fid_weights: str | None, device: torch.device
    ) -> None:
        # The run's data as its training drew it (crops, flips), from another seed.
        dataset = make_dataset(
            config["data"], REAL_SEED, conditional=False, random_crop=config["crop"] == "random", image_size=image_size
        )
        self.photo_crops = (
            reference_crops(image_size=image_size) if config["data"] == "builtin" and config["conditional"] else None
        )
        self.n = min(kid_n or KID_N, len(dataset)) if dataset.samples_repeat else kid_n or KID_N
        real = _real_images(dataset, 0, self.n)
        self.real_pattern = fixed_pattern(real)
        self.kid: dict = {"not_measured": "--kid-n 0"}
        self.network: FeatureNetwork | None = None
        if kid_n:
            self._prepare_kid(dataset, real, kid_n, fid_weights, device)

    def _prepare_kid(
        self, dataset: ImageStream, real: torch.Tensor, n: int, fid_weights: str | None, device: torch.device
    ) -> None:
        try:
            network = FeatureNetwork(find_feature_weights(fid_weights), device)
        except EvalError as err:
            self.kid = {"not_measured": str(err)}
            return
        if dataset.samples_repeat and len(dataset) < 2 * n:
            n = len(dataset) // 2  # two disjoint real sets, so that real against real is no copy against itself
        if n < 2:
            self.kid = {"not_measured": f"{dataset.name} holds {len(dataset)} images; KID needs two sets of at least 2"}
            return
        self.network, self.kid_n = network, n
        self.real_features = self._features(real[:n])
        self.other_real = _real_images(dataset, n, n)  # scored as a generator's images are: real against real
        real_vs_real = self.kid_of(self.other_real)
        self.kid = {"network": network.name, "network_sha256": network.sha256, "n": n, "real_vs_real": real_vs_real}

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        assert self.network is not None
        return extract_features(
            self.network,
            images.split(FEATURE_BATCH),
            math.ceil(len(images) / FEATURE_BATCH),
            "features",
            progress=False,
        )[0]

    def kid_of(self, images: torch.Tensor) -> float:
        """KID of kid_n uint8 images against the real ones, one estimate over all pairs (subsets of all
        n would only permute them: there is no spread to report)."""
        return kernel_inception_distance(self.real_features, self._features(images), 1, self.kid_n)[0]

    def __call__(self, G: Generator) -> dict:
        """The figures of G (eval mode): {"photo_match", "photo_variety", "kid", "fixed_pattern"}."""
        classes = list(range(G.config.num_classes)) or None
        generated = generate(G, self.n, classes=classes, seed=GENERATE_SEED)
        kid = dict(self.kid)
        if self.network is not None:
            # its own draw when fewer: a slice of `generated` would hold only the first classes
            for_kid = (
                generated if self.kid_n == self.n else generate(G, self.kid_n, classes=classes, seed=GENERATE_SEED)
            )
            kid["kid"] = self.kid_of(for_kid)
        return {
            "photo_match": generator_photo_match(G, reference=self.photo_crops)
            if self.photo_crops is not None
            else None,
            "photo_variety": generator_photo_variety(G, reference=self.photo_crops)
            if self.photo_crops is not None
            else None,
            "kid": kid,
            "fixed_pattern": {"generated": fixed_pattern(generated), "real": self.real_pattern, "n": self.n},
        }


def _as_shipped(G: Generator) -> Generator:
    """G with its weights rounded to float16 as an export stores them, computing in float32."""
    return G.half().float().eval()


def learning_curve(
    run: RunDirectory,
    measure: Measurer,
    up_to: int,
    every: int,
    device: torch.device,
    exported: Path,
    exported_figures: dict,
) -> list[dict]:
    """The figures of G_ema at each checkpoint the run kept up to step `up_to`: those at a multiple of
    `every` steps (all for 0) and the one at `up_to`. The exported checkpoint is not measured again:
    its figures (measured as shipped) are `exported_figures`."""
    return [
        {
            "step": step,
            **(
                exported_figures
                if path.resolve() == exported.resolve()
                else measure(_as_shipped(generator_from_checkpoint(path)).to(device))
            ),
        }
        for step, path in list_checkpoints(run.checkpoints)
        if step == up_to or (step < up_to and (every == 0 or step % every == 0))
    ]


@dataclass(kw_only=True)
class ExportConfig:
    """tritonsagan-export's settings."""

    run: str = config_field(REQUIRED, "the training run directory (tritonsagan-train --out)", positional=True)
    out: str = config_field(REQUIRED, "the folder to write (created; its files are replaced)", required=True)
    checkpoint: str | None = config_field(None, "the run's checkpoint to export (default: its newest)")
    name: str | None = config_field(None, "the model's name in its card (default: the --out folder's name)")
    kid_n: int = config_field(
        KID_N, f"generated and real images for KID and the fixed pattern (0: no KID, the fixed pattern on {KID_N})"
    )
    fid_weights: str = fid_weights_field()
    curve: str | None = config_field(
        None,
        "also measure G_ema at every checkpoint the run kept (card.json keeps the figures) and draw them in this PNG",
    )
    curve_every: int = config_field(
        0, "with --curve, measure only the checkpoints at a multiple of this many steps, and the exported one (0: all)"
    )
    beside: list[str] | None = config_field(
        None,
        "card.json files of other exports (made with --curve) whose learning curves the --curve PNG draws beside this "
        "run's, each labelled by its file's name (its folder's for a card.json)",
        nargs="+",
    )
    device: str = device_field()


def read_card(path: Path, flag: str) -> tuple[str, dict]:
    """(label, figures) of an export's card.json given to `flag`: labelled by its file's name, or its folder's."""
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{flag} {path}: not a readable card.json ({err})") from None
    if not isinstance(card, dict) or not {"name", "step", "generator", "kid", "curve"} <= card.keys():
        raise ConfigError(f"{flag} {path}: not a model card's figures (tritonsagan-export writes card.json)")
    return (path.parent.name if path.name == CARD_FIGURES_NAME else path.name.removesuffix(".json")), card


def read_curve_card(path: Path) -> tuple[str, dict]:
    """read_card for --beside, which draws the card's learning curve."""
    label, card = read_card(path, "--beside")
    if not card["curve"]:
        raise ConfigError(f"--beside {path}: its card has no learning curve (export that run with --curve)")
    return label, card


def export(cfg: ExportConfig) -> dict:
    """Write cfg.out from the run's newest checkpoint (or cfg.checkpoint): G_ema in float16, config.json,
    the model card README.md and its figures card.json; return the figures. With cfg.curve (a .png
    path), also the figures of every checkpoint the run kept up to it, drawn there."""
    run, out, curve = RunDirectory(cfg.run), Path(cfg.out), cfg.curve
    if curve:
        require_matplotlib()  # before any file is written
    beside = [read_curve_card(Path(path)) for path in cfg.beside or ()]
    if not run.config_history.is_file():
        raise ConfigError(f"{run.root}: not a training run (no {run.config_history.name})")
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else run.latest_checkpoint()
    if checkpoint is None or not checkpoint.is_file():
        raise ConfigError(
            f"{checkpoint or run.checkpoints}: no checkpoint to export"
            + ("" if cfg.checkpoint else " (train at least to the first --save-every)")
        )
    step = read_sidecar(checkpoint)["step"]
    config, changes = run_settings(run, step)
    G = generator_from_checkpoint(checkpoint)
    G.half().save_pretrained(out)
    G = Generator.from_pretrained(
        out, resolve_device(cfg.device)
    ).eval()  # measured as shipped: the float16 weights, computed in float32
    measure = Measurer(config, G.config.image_size, cfg.kid_n, cfg.fid_weights or None, G.conv_out.weight.device)
    segments = training_segments(run, step)
    figures = measure(G)
    card = {
        "name": cfg.name or out.name,
        "step": step,
        "batch_size": config["batch_size"],
        "config": config,
        "generator": json.loads((out / "config.json").read_text()),
        "weights_bytes": (out / WEIGHTS_NAME).stat().st_size,
        "segments": segments,
        "training_seconds": sum(s["seconds"] for s in segments),
        "recipe_changes": changes,
        **figures,
        "curve": learning_curve(run, measure, step, cfg.curve_every, G.conv_out.weight.device, checkpoint, figures)
        if curve
        else None,
    }
    atomic_write_json(out / CARD_FIGURES_NAME, card)
    if curve:
        curve_figure(card, curve, beside)
    atomic_write_bytes(out / MODEL_CARD_NAME, model_card(card).encode())
    return card


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritonsagan-export", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    add_config_argument(parser)
    add_config_flags(parser, ExportConfig)
    return parser


def run_export(cfg: ExportConfig) -> str:
    """tritonsagan-export: the folder written, and its figures said in a line."""
    if cfg.kid_n < 0 or cfg.kid_n == 1:
        raise ConfigError(f"--kid-n {cfg.kid_n}: give 0 (no KID) or at least 2")
    if cfg.curve_every < 0:
        raise ConfigError(f"--curve-every {cfg.curve_every}: give a number of steps, or 0 for every checkpoint")
    if cfg.curve_every and not cfg.curve:
        raise ConfigError("--curve-every chooses the checkpoints of the --curve learning curve: give --curve too")
    if cfg.beside and not cfg.curve:
        raise ConfigError("--beside draws other learning curves in the --curve PNG: give --curve too")
    if cfg.curve and not cfg.curve.lower().endswith(".png"):
        raise ConfigError(f"--curve {cfg.curve}: the learning curve is drawn as a PNG; give a path ending in .png")
    card = export(cfg)
    kid = card["kid"]
    said = (
        f"KID {kid['kid']:.4f} (real vs real {kid['real_vs_real']:.4f})"
        if "kid" in kid
        else f"no KID ({kid['not_measured']})"
    )
    match = (
        f", photo match {card['photo_match']['accuracy']:.0%}, photo variety {card['photo_variety']['variety']:.2f}"
        if card["photo_match"]
        else ""
    )
    return f"exported step {card['step']} of {cfg.run} to {cfg.out}: {said}{match}; model card {Path(cfg.out) / MODEL_CARD_NAME}"


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), lambda args: run_export(build_config(ExportConfig, args)), argv)


if __name__ == "__main__":
    sys.exit(main())
