"""KID's scale on the built-in photos: what real crops made worse in known ways (fewer pixels, noise,
fewer colour levels) score against real crops, measured as tritonsagan-export's model card measures a
generator (the same real crops, the same n, one estimate over all pairs, the same feature network), so
that a card's KID reads against them; the KIDs of model cards given with --cards sit beside them.

    python -m tritonsagan.bench.kid_scale --out bench/results/kid-scale/builtin-photos.json \\
        --cards tritonsagan/pretrained/builtin-photos-64/card.json bench/results/exports/builtin-photos-64_*.json
    python -m tritonsagan.bench.kid_scale --table bench/results/kid-scale/builtin-photos.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tritonsagan.atomic_write import atomic_write_json
from tritonsagan.cli import resolve_device, run_command
from tritonsagan.config_flags import add_config_argument, add_config_flags, build_config, config_field
from tritonsagan.errors import ConfigError
from tritonsagan.export import KID_N, Measurer, read_card
from tritonsagan.shared_fields import device_field, fid_weights_field

NOISE_SEED = 0
PIXEL_RANGE = 255
BUILTIN_PHOTOS_RUN = {"data": "builtin", "crop": "random", "conditional": True}  # the settings the cards measure on


def resampled(images: torch.Tensor, factor: int) -> torch.Tensor:
    """uint8 images shrunk `factor` times (area averaging) and scaled back up (bilinear): the detail a
    generator drawing at 1/factor of the resolution could hold."""
    small = F.interpolate(images.float(), scale_factor=1 / factor, mode="area")
    return _as_uint8(F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False))


def noisy(images: torch.Tensor, fraction: float) -> torch.Tensor:
    """uint8 images plus Gaussian noise of standard deviation `fraction` of the pixel range."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(NOISE_SEED))
    return _as_uint8(images.float() + fraction * PIXEL_RANGE * noise)


def quantised(images: torch.Tensor, levels: int) -> torch.Tensor:
    """uint8 images with `levels` evenly spaced values per colour channel."""
    step = PIXEL_RANGE / (levels - 1)
    return _as_uint8(torch.round(images.float() / step) * step)


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.round().clamp(0, PIXEL_RANGE).to(torch.uint8)


# name -> (what it is, how the real crops are changed); the report's first row, "real", is the
# Measurer's own real-vs-real figure.
REAL_ROW = ("real", "other real crops, unchanged")
DEGRADATIONS: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "half_resolution": ("real crops shrunk to half their side and scaled back up", lambda x: resampled(x, 2)),
    "quarter_resolution": (
        "real crops shrunk to a quarter of their side and scaled back up",
        lambda x: resampled(x, 4),
    ),
    "noise_5": ("real crops plus Gaussian noise of 5% of the pixel range", lambda x: noisy(x, 0.05)),
    "noise_10": ("real crops plus Gaussian noise of 10% of the pixel range", lambda x: noisy(x, 0.10)),
    "levels_8": ("real crops with 8 levels per colour channel", lambda x: quantised(x, 8)),
}


@dataclass(kw_only=True)
class KidScaleConfig:
    """python -m tritonsagan.bench.kid_scale's settings."""

    out: str | None = config_field(None, "the JSON report to write")
    table: str | None = config_field(None, "print the markdown table of this report instead of measuring")
    cards: list[str] | None = config_field(
        None,
        "model cards' card.json (tritonsagan-export) whose KID the report sets beside the scale, each named by its "
        "file's name (its folder's for a card.json)",
        nargs="+",
    )
    image_size: int = config_field(64, "the side of the real crops")
    kid_n: int = config_field(KID_N, "real images in each set, as tritonsagan-export's --kid-n")
    fid_weights: str = fid_weights_field()
    device: str = device_field()


def measure(cfg: KidScaleConfig) -> dict:
    """The report: each degradation's KID against the real crops, and each card's own KID."""
    cards = [(path, *read_card(Path(path), "--cards")) for path in cfg.cards or ()]  # (path, label, card)
    for path, _, card in cards:
        if "kid" not in card["kid"]:
            raise ConfigError(f"--cards {path}: its card has no KID ({card['kid']['not_measured']})")
        if card["generator"]["image_size"] != cfg.image_size:
            raise ConfigError(
                f"--cards {path}: its model draws {card['generator']['image_size']}x{card['generator']['image_size']} "
                f"images; give --image-size {card['generator']['image_size']}"
            )
    start = time.perf_counter()
    measurer = Measurer(
        BUILTIN_PHOTOS_RUN, cfg.image_size, cfg.kid_n, cfg.fid_weights or None, resolve_device(cfg.device)
    )
    if measurer.network is None:
        raise ConfigError(f"KID's scale needs the FID feature network: {measurer.kid['not_measured']}")
    for path, _, card in cards:
        if (card["kid"]["n"], card["kid"]["network_sha256"]) != (measurer.kid_n, measurer.network.sha256):
            raise ConfigError(
                f"--cards {path}: its KID was measured on {card['kid']['n']} images by {card['kid']['network']}, "
                f"the scale on {measurer.kid_n} by {measurer.network.name}: give --kid-n and --fid-weights as its export did"
            )
    name, what = REAL_ROW
    rows = [{"name": name, "what": what, "kid": measurer.kid["real_vs_real"]}]
    rows += [
        {"name": name, "what": what, "kid": measurer.kid_of(change(measurer.other_real))}
        for name, (what, change) in DEGRADATIONS.items()
    ]
    return {
        "network": measurer.network.name,
        "network_sha256": measurer.network.sha256,
        "n": measurer.kid_n,
        "image_size": cfg.image_size,
        "rows": rows,
        "cards": [{"name": label, "step": card["step"], "kid": card["kid"]["kid"]} for _, label, card in cards],
        "seconds": time.perf_counter() - start,
    }


def scale_table(report: dict) -> str:
    """The report as a markdown table: the real crops' changes, then the cards."""
    lines = [
        f"| images scored against {report['n']} real {report['image_size']}x{report['image_size']} crops | KID |",
        "|---|---|",
    ]
    lines += [f"| {row['what']} | {row['kid']:.4f} |" for row in report["rows"]]
    lines += [
        f"| {card['name']} at step {card['step']:,} (its model card) | {card['kid']:.4f} |" for card in report["cards"]
    ]
    return "\n".join(lines)


def run_kid_scale(cfg: KidScaleConfig) -> str | None:
    """Measure and write the report (and say it), or print a report's table on stdout."""
    if cfg.table:
        try:
            print(scale_table(json.loads(Path(cfg.table).read_text())))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"--table {cfg.table}: not a KID scale report ({err!r})") from None
        return None
    if not cfg.out:
        raise ConfigError("give --out (the report to write) or --table (a report to print)")
    if cfg.kid_n < 2:
        raise ConfigError(f"--kid-n {cfg.kid_n}: KID needs at least 2 images in each set")
    report = measure(cfg)
    atomic_write_json(Path(cfg.out), report)
    return f"wrote {cfg.out} ({report['seconds']:.0f} s)\n{scale_table(report)}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tritonsagan.bench.kid_scale", description=__doc__.split("\n\n")[0])
    add_config_argument(parser)
    add_config_flags(parser, KidScaleConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), lambda args: run_kid_scale(build_config(KidScaleConfig, args)), argv)


if __name__ == "__main__":
    sys.exit(main())
