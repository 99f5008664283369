"""tritonsagan-export: a training run's G_ema as a folder to share or ship, with its model card.

    tritonsagan-export RUN --out FOLDER [--checkpoint PATH] [--name NAME] [--kid-n N] [--curve PNG]

The folder holds what save_pretrained writes (model.safetensors, G_ema in float16, and config.json),
which load_generator and `tritonsagan-generate --weights FOLDER` read; README.md, its model card; and
card.json, the card's figures. Every figure is read from the run or measured here on the exported
float16 weights:

- from the run (config_history.jsonl, metrics.jsonl): the data, steps, batch, learning rates and
  EMA; the device of each start or resume; the training wall-clock, each process's steps over its
  last logged images/s (the steps kept: work lost to a kill and done again is not counted);
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

With --curve PNG, the same figures of G_ema at every checkpoint the run kept: its learning curve,
kept in card.json and drawn in that picture.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from tritonsagan.models import Generator
from tritonsagan.models.pretrained import WEIGHTS_NAME

from .atomic_write import atomic_write_bytes, atomic_write_json
from .checkpoint import list_checkpoints, read_sidecar
from .cli import add_device_argument, resolve_device, run_command
from .curves import HAS_MATPLOTLIB, read_metrics
from .data import ImageStream, make_dataset
from .errors import ConfigError
from .feature_network import EvalError, FeatureNetwork, extract_features, find_feature_weights
from .fixed_pattern import fixed_pattern
from .generate import generate
from .metrics import kernel_inception_distance
from .photo_match import generator_photo_match, reference_crops
from .photo_variety import generator_photo_variety
from .run_directory import RunDirectory, generator_from_checkpoint
from .shipped import CARD_FIGURES_NAME, MODEL_CARD_NAME
from .train_config import describe_device_settings

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
        real_vs_real = self._kid(self._features(_real_images(dataset, n, n)))
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

    def _kid(self, features: torch.Tensor) -> float:
        """KID against the real features, one estimate over all pairs of the n images (subsets of all n
        would only permute them: there is no spread to report)."""
        return kernel_inception_distance(self.real_features, features, 1, self.kid_n)[0]

    def __call__(self, G: Generator) -> dict:
        """The figures of G (eval mode): {"photo_match", "photo_variety", "kid", "fixed_pattern"}."""
        classes = list(range(G.config.num_classes)) or None
        generated = generate(G, self.n, classes=classes, seed=GENERATE_SEED)
        kid = dict(self.kid)
        if (
            self.network is not None
        ):  # its own draw when fewer: a slice of `generated` would hold only the first classes
            for_kid = (
                generated if self.kid_n == self.n else generate(G, self.kid_n, classes=classes, seed=GENERATE_SEED)
            )
            kid["kid"] = self._kid(self._features(for_kid))
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


def learning_curve(run: RunDirectory, measure: Measurer, up_to: int, device: torch.device) -> list[dict]:
    """The figures of G_ema at each checkpoint the run kept, up to step `up_to`."""
    return [
        {"step": step, **measure(_as_shipped(generator_from_checkpoint(path)).to(device))}
        for step, path in list_checkpoints(run.checkpoints)
        if step <= up_to
    ]


def _require_matplotlib() -> None:
    if not HAS_MATPLOTLIB:
        raise ConfigError(
            "drawing the learning curve needs matplotlib: pip install matplotlib (the package's plot extra)"
        )


def curve_figure(card: dict, path: str | Path) -> Path:
    """The learning curve in card.json as a PNG: photo_match, photo_variety, KID and the fixed pattern
    of G_ema by step, each beside what real images score."""
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve = card["curve"]
    steps = [point["step"] for point in curve]
    panels = []
    if card["photo_match"]:
        panels.append(
            (
                "photo match",
                [p["photo_match"]["accuracy"] for p in curve],
                card["photo_match"]["fresh_crops"],
                "fresh real crops",
                (0, 1),
            )
        )
    if card.get("photo_variety"):  # cards exported before it was measured lack it
        panels.append(("photo variety", [p["photo_variety"]["variety"] for p in curve], 1.0, "real crops", (0, None)))
    if "kid" in card["kid"]:
        panels.append(
            (
                f"KID (n={card['kid']['n']})",
                [p["kid"]["kid"] for p in curve],
                card["kid"]["real_vs_real"],
                "real vs real",
                (None, None),
            )
        )
    panels.append(
        (
            "fixed pattern",
            [p["fixed_pattern"]["generated"] for p in curve],
            card["fixed_pattern"]["real"],
            "real crops",
            (0, None),
        )
    )
    figure = Figure(figsize=(5 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    for ax, (title, values, real, real_label, ylim) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        ax.plot(steps, values, "o-", label="G_ema")
        ax.axhline(real, color="green", lw=0.8, label=real_label)
        ax.set(xlabel="step", title=title, ylim=ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle(card["name"])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def export(
    run_dir: str | Path,
    out: str | Path,
    checkpoint: str | Path | None = None,
    name: str | None = None,
    kid_n: int = KID_N,
    fid_weights: str | None = None,
    device: str = "cpu",
    curve: str | Path | None = None,
) -> dict:
    """Write `out` from the run's newest checkpoint (or `checkpoint`): G_ema in float16, config.json,
    the model card README.md and its figures card.json; return the figures. With `curve` (a .png
    path), also the figures of every checkpoint the run kept up to it, drawn there."""
    run, out = RunDirectory(run_dir), Path(out)
    if curve:
        _require_matplotlib()  # before any file is written
    if not run.config_history.is_file():
        raise ConfigError(f"{run.root}: not a training run (no {run.config_history.name})")
    checkpoint = Path(checkpoint) if checkpoint else run.latest_checkpoint()
    if checkpoint is None or not checkpoint.is_file():
        raise ConfigError(
            f"{checkpoint or run.checkpoints}: no checkpoint to export"
            + ("" if checkpoint else " (train at least to the first --save-every)")
        )
    step = read_sidecar(checkpoint)["step"]
    config = json.loads(run.config.read_text())
    G = generator_from_checkpoint(checkpoint)
    G.half().save_pretrained(out)
    G = Generator.from_pretrained(out, device).eval()  # measured as shipped: the float16 weights, computed in float32
    measure = Measurer(config, G.config.image_size, kid_n, fid_weights, G.conv_out.weight.device)
    segments = training_segments(run, step)
    card = {
        "name": name or out.name,
        "step": step,
        "batch_size": config["batch_size"],
        "config": config,
        "generator": json.loads((out / "config.json").read_text()),
        "weights_bytes": (out / WEIGHTS_NAME).stat().st_size,
        "segments": segments,
        "training_seconds": sum(s["seconds"] for s in segments),
        **measure(G),
        "curve": learning_curve(run, measure, step, G.conv_out.weight.device) if curve else None,
    }
    atomic_write_json(out / CARD_FIGURES_NAME, card)
    if curve:
        curve_figure(card, curve)
    atomic_write_bytes(out / MODEL_CARD_NAME, model_card(card).encode())
    return card


def _percent(share: float) -> str:
    return f"{share:.0%}"


def card_table(card: dict) -> str:
    """The model card's table of figures (markdown), from card.json; the README shows the shipped ones'."""
    config, generator, match, kid, pattern = (
        card["config"],
        card["generator"],
        card["photo_match"],
        card["kid"],
        card["fixed_pattern"],
    )
    classes, side = generator["num_classes"], generator["image_size"]
    rows = [
        (
            "model",
            f"Generator, {side}x{side}, ch {generator['ch']}, z_dim {generator['z_dim']}, attention at {generator['attn_res']}x{generator['attn_res']}, "
            f"{classes or 'no'} classes; stored in float16 ({card['weights_bytes'] / 2**20:.1f} MiB)",
        ),
        (
            "data",
            "the 17 photos bundled in scikit-image's wheel (`--data builtin`), random square crops, each photo a class"
            if config["data"] == "builtin"
            else f"{config['data']}",
        ),
        (
            "training",
            f"{card['step']:,} steps at batch {card['batch_size']} ({card['step'] * card['batch_size']:,} images), lr G {config['lr_g']:g}, "
            f"lr D {config['lr_d']:g}, EMA decay {config['ema_decay']:g} from step {config['ema_start']:,}; "
            + describe_device_settings(config["compile"], config["bf16"], config["diffaug"]),
        ),
        ("device", "; ".join(sorted({s["device"] for s in card["segments"]}))),
        (
            "wall-clock",
            f"{card['training_seconds'] / 60:.1f} minutes of training in {len(card['segments'])} process(es), sampling and checkpoints included",
        ),
    ]
    if match:
        rows.append(
            (
                "photo match",
                f"{_percent(match['accuracy'])} of {match['images']} generated images are nearest in colour to crops of their own "
                f"class's photo (fresh real crops: {_percent(match['fresh_crops'])}; chance: 1 in {classes}); tritonsagan.photo_match",
            )
        )
    variety = card.get("photo_variety")
    if variety:
        rows.append(
            (
                "photo variety",
                f"{variety['variety']:.2f}: how far each class's {variety['images'] // classes} generated images differ from each other, "
                "over how far real crops of its photo do, the mean over classes (real crops: about 1; one image per class "
                "whatever the latent: 0); tritonsagan.photo_variety",
            )
        )
    if "not_measured" in kid:
        rows.append(("KID", f"not measured: {kid['not_measured']}"))
    else:
        rows.append(
            (
                "KID",
                f"{kid['kid']:.4f}: {kid['n']} generated images against {kid['n']} real ones (one estimate over all pairs); "
                f"{kid['n']} other real images against the same score {kid['real_vs_real']:.4f}; "
                f"feature network {kid['network']} (sha256 {kid['network_sha256'][:12]})",
            )
        )
    rows.append(
        (
            "fixed pattern",
            f"{pattern['generated']:.2f} for {pattern['n']} generated images, {pattern['real']:.2f} for as many real ones "
            "(frames and grids every image repeats; about 0 for real crops); tritonsagan.fixed_pattern",
        )
    )
    return "| | |\n|---|---|\n" + "\n".join(f"| {key} | {text} |" for key, text in rows)


def model_card(card: dict) -> str:
    """README.md of an exported folder, from its figures (card.json)."""
    classes, side = card["generator"]["num_classes"], card["generator"]["image_size"]
    call = f"classes=list(range({classes}))" if classes else "classes=None"
    return f"""# {card["name"]}

A SAGAN generator (G_ema, the moving average of G's weights) trained with tritonsagan, exported from
step {card["step"]:,} of its run by `tritonsagan-export`. Every figure below is read from that run or
measured on these weights.

```python
import tritonsagan

G = tritonsagan.load_generator("path/to/{card["name"]}")
images = tritonsagan.generate(G, {classes or 8}, {call})  # uint8 (n, 3, {side}, {side})
```

{card_table(card)}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritonsagan-export", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("run", help="the training run directory (tritonsagan-train --out)")
    parser.add_argument("--out", required=True, help="the folder to write (created; its files are replaced)")
    parser.add_argument("--checkpoint", help="the run's checkpoint to export (default: its newest)")
    parser.add_argument("--name", help="the model's name in its card (default: the --out folder's name)")
    parser.add_argument(
        "--kid-n",
        type=int,
        default=KID_N,
        help=f"generated and real images for KID and the fixed pattern (0: no KID, the fixed pattern on {KID_N}; default: {KID_N})",
    )
    parser.add_argument(
        "--fid-weights", help="TorchScript feature network for KID (default: as tritonsagan-eval finds it)"
    )
    parser.add_argument(
        "--curve",
        help="also measure G_ema at every checkpoint the run kept (card.json keeps the figures) and draw them in this PNG",
    )
    add_device_argument(parser)
    return parser


def _run(args: argparse.Namespace) -> str:
    if args.kid_n < 0 or args.kid_n == 1:
        raise ConfigError(f"--kid-n {args.kid_n}: give 0 (no KID) or at least 2")
    if args.curve and not args.curve.lower().endswith(".png"):
        raise ConfigError(f"--curve {args.curve}: the learning curve is drawn as a PNG; give a path ending in .png")
    card = export(
        args.run,
        args.out,
        args.checkpoint,
        args.name,
        args.kid_n,
        args.fid_weights,
        resolve_device(args.device),
        args.curve,
    )
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
    return f"exported step {card['step']} of {args.run} to {args.out}: {said}{match}; model card {Path(args.out) / MODEL_CARD_NAME}"


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
