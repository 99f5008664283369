"""Offline evaluation: FID, KID, precision and recall, density and coverage (and IS when the feature
network gives class logits) on the same features; tritonsagan-eval.

The feature network and how it reads images: tritonsagan.feature_network.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Subset

from tritonsagan.models import Generator
from tritonsagan.models.config import IMAGE_SIZE, IMAGE_SIZES, check_image_size

from . import feature_network
from .atomic_write import atomic_write_json
from .cli import resolve_device, run_command
from .config_flags import add_config_argument, add_config_flags, build_config, config_field
from .data import make_dataset
from .feature_network import (
    EvalError,
    FeatureNetwork,
    describe_network,
    extract_features,
    find_feature_weights,
)
from .generate import generate_batches
from .metrics import (
    MANIFOLD_K,
    feature_statistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    manifold_metrics,
)
from .run_directory import load_generator
from .shared_fields import classes_field, device_field, fid_weights_field, loader_workers_field, truncation_field
from .weights_io import WeightsError, load_safetensors, save_safetensors

if TYPE_CHECKING:
    from .train_config import TrainConfig

STATS_TAG = "tritonsagan_fid_stats"
STATS_METADATA = (
    "network_sha256",
    "network_name",
    "source",
)  # the strings under STATS_TAG (and image_size, an int, since it was added)


@dataclass
class ReferenceStats:
    """Real-image statistics for one feature network: FID's mean and covariance, KID's features."""

    mu: torch.Tensor
    sigma: torch.Tensor
    features: torch.Tensor
    network_sha256: str
    network_name: str
    source: str
    image_size: int | None  # of the real images (None: a file from before the size was recorded)

    @classmethod
    def from_features(
        cls, features: torch.Tensor, network: FeatureNetwork, source: str, image_size: int
    ) -> ReferenceStats:
        mu, sigma = fid_statistics(features, "real")
        return cls(mu, sigma, features, network.sha256, network.name, source, image_size)

    def save(self, path: str | os.PathLike) -> None:
        meta = {
            "network_sha256": self.network_sha256,
            "network_name": self.network_name,
            "source": self.source,
            "image_size": self.image_size,
        }
        save_safetensors(
            path, {"mu": self.mu, "sigma": self.sigma, "features": self.features}, {STATS_TAG: json.dumps(meta)}
        )

    @classmethod
    def load(cls, path: str | os.PathLike, network: FeatureNetwork) -> ReferenceStats:
        path = Path(path)
        if not path.is_file():
            raise EvalError(f"reference statistics not found: {path}")
        tensors, metadata = load_safetensors(path)
        if STATS_TAG not in metadata or not {"mu", "sigma", "features"} <= tensors.keys():
            raise EvalError(
                f"{path}: not a tritonsagan statistics file (needs tensors mu, sigma, features and {STATS_TAG} metadata)"
            )
        try:
            meta = json.loads(metadata[STATS_TAG])
        except json.JSONDecodeError:
            meta = None
        missing = [key for key in STATS_METADATA if not isinstance(meta, dict) or not isinstance(meta.get(key), str)]
        if missing:
            raise EvalError(
                f"{path}: damaged statistics file ({STATS_TAG} metadata lacks {', '.join(missing)}); recompute it with --save-ref-stats"
            )
        if meta["network_sha256"] != network.sha256:
            raise EvalError(
                f"{path} was computed with another feature network, {describe_network(meta['network_name'], meta['network_sha256'])}; "
                f"this evaluation uses {describe_network(network.name, network.sha256)}. Recompute it with --save-ref-stats"
            )
        size = meta.get("image_size")
        return cls(
            tensors["mu"],
            tensors["sigma"],
            tensors["features"],
            meta["network_sha256"],
            meta["network_name"],
            meta["source"],
            size,
        )

    def check_image_size(self, path: str | os.PathLike, image_size: int) -> None:
        """Refuses statistics of real images of another size than the generator's."""
        if self.image_size is not None and self.image_size != image_size:
            raise EvalError(
                f"{path}: statistics of {self.image_size}x{self.image_size} real images, the generator draws {image_size}x{image_size}; "
                "compute them at its size with --save-ref-stats"
            )


def fid_statistics(features: torch.Tensor, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance, refusing sets too small for a full-rank covariance."""
    n, d = features.shape
    if n <= d:
        raise EvalError(
            f"FID needs more {which} images than the feature dimension ({d}) for a full-rank covariance; got {n}"
        )
    return feature_statistics(features)


def real_batches(
    data: str, n: int, batch_size: int, seed: int = 0, workers: int = 0, image_size: int = IMAGE_SIZE
) -> tuple[Iterable[torch.Tensor], int]:
    """uint8 batches of image_size x image_size real images and how many there are: the first n of the
    builtin stream, or up to n images of a folder (centre crops) or packed dataset (packed at that
    size), each once, flipped half of the time."""
    dataset = make_dataset(data, seed, conditional=False, random_crop=False, image_size=image_size)
    count = min(n, len(dataset)) if dataset.samples_repeat else n
    loader = DataLoader(Subset(dataset, range(count)), batch_size=batch_size, num_workers=workers)
    return (images for images, _, _ in loader), count


def reference_stats(
    network: FeatureNetwork,
    data: str,
    n: int,
    batch_size: int = 50,
    workers: int = 0,
    progress: bool = True,
    image_size: int = IMAGE_SIZE,
) -> ReferenceStats:
    batches, count = real_batches(data, n, batch_size, workers=workers, image_size=image_size)
    features, _ = extract_features(network, batches, math.ceil(count / batch_size), "real images", progress)
    return ReferenceStats.from_features(features, network, reference_source(data, n, image_size), image_size)


def reference_source(data: str, n: int, image_size: int) -> str:
    return f"{data}, n={n}, {image_size}x{image_size}"


@dataclass(kw_only=True)
class EvalConfig:
    """tritonsagan-eval's settings; `evaluate` reads those of the generated side."""

    weights: str | None = config_field(
        None,
        "the generator to evaluate: a save_pretrained folder, its model.safetensors, a training checkpoint, "
        "a run directory (its G_ema), or the name of shipped weights",
    )
    data: str = config_field(
        "builtin",
        "real images: an image folder, a packed dataset (tritonsagan-prepare), or 'builtin', the photos bundled with scikit-image",
    )
    n: int = config_field(10_000, "generated images, and real images unless --n-real says otherwise")
    n_real: int | None = config_field(None, "real images read from --data for the statistics (default: --n)")
    classes: list[int] | None = classes_field()
    seed: int = config_field(0, "seed of the latents, the random classes and KID's subsets")
    truncation: float | None = truncation_field()
    batch_size: int = config_field(50, "images per forward pass of the generator and the feature network")
    device: str = device_field()
    fid_weights: str = fid_weights_field()
    ref_stats: str | None = config_field(
        None, "reuse the real-image statistics in this file (from --save-ref-stats) instead of reading --data"
    )
    save_ref_stats: str | None = config_field(
        None, "write the real-image statistics to this safetensors file, for --ref-stats later"
    )
    image_size: int | None = config_field(
        None,
        f"side of the real images read from --data: {', '.join(map(str, IMAGE_SIZES))} "
        f"(default: the generator's; {IMAGE_SIZE} with no --weights)",
    )
    kid_subsets: int = config_field(100, "KID's mean and std are over this many random subsets")
    kid_subset_size: int = config_field(1000, "images in each KID subset, at most n")
    nearest_k: int = config_field(
        MANIFOLD_K, "k of the k-nearest-neighbour balls of precision, recall, density and coverage (0: not computed)"
    )
    workers: int = loader_workers_field()
    out: str = config_field("eval.json", "JSON file for the results")


def evaluate(
    generator: Generator, reference: ReferenceStats, network: FeatureNetwork, cfg: EvalConfig, progress: bool = True
) -> dict:
    """FID, KID (mean and std over subsets), precision, recall, density, coverage (k = cfg.nearest_k;
    0: not computed) and, with class logits, IS of cfg.n generated images."""
    n, batch_size = cfg.n, cfg.batch_size
    if n < 2:
        raise EvalError(f"n must be at least 2, got {n}")
    batches = generate_batches(generator, n, cfg.classes, cfg.seed, cfg.truncation, batch_size)
    features, logits = extract_features(network, batches, math.ceil(n / batch_size), "generated images", progress)
    mu, sigma = fid_statistics(features, "generated")
    kid, kid_std = kernel_inception_distance(
        reference.features, features, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed
    )
    result = {"fid": frechet_distance(reference.mu, reference.sigma, mu, sigma), "kid": kid, "kid_std": kid_std}
    if cfg.nearest_k:
        result.update(manifold_metrics(reference.features, features, cfg.nearest_k), nearest_k=cfg.nearest_k)
    if logits is not None:
        result["is"], result["is_std"] = inception_score(logits, splits=min(10, n))
    result.update(n=n, network=network.name, network_sha256=network.sha256, reference=reference.source)
    return result


class FidMonitor:
    """FID of G_ema during training (--fid-every), on cfg.fid_n images. The real statistics are computed
    once per run and cached in the file `cache` (recomputed when the network, the data or n changes)."""

    def __init__(self, cfg: TrainConfig, cache: Path, device: torch.device) -> None:
        self.network = FeatureNetwork(find_feature_weights(cfg.fid_weights or None), device)
        print(f"FID feature network: {self.network.describe()}", file=sys.stderr, flush=True)
        # Training logs FID and KID only: the k-nearest-neighbour metrics' distance passes would be wasted.
        self.eval_config = EvalConfig(n=cfg.fid_n, nearest_k=0)
        try:
            self.reference = ReferenceStats.load(cache, self.network)
        except (EvalError, WeightsError):  # none yet, from another network, or unreadable
            self.reference = None
        if self.reference is None or self.reference.source != reference_source(cfg.data, cfg.fid_n, cfg.image_size):
            # The DataLoader seeds itself from the global RNG: keep resumes exact.
            with torch.random.fork_rng(devices=[]):
                self.reference = reference_stats(
                    self.network, cfg.data, cfg.fid_n, workers=cfg.workers, progress=False, image_size=cfg.image_size
                )
            self.reference.save(cache)

    def __call__(self, generator: Generator) -> dict:
        return evaluate(generator, self.reference, self.network, self.eval_config, progress=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tritonsagan-eval",
        description="FID, KID, precision and recall, density and coverage (and IS) of a generator, offline. "
        + feature_network.__doc__.split("\n\n")[1],
    )
    add_config_argument(parser)
    add_config_flags(parser, EvalConfig)
    return parser


def _reference(cfg: EvalConfig, network: FeatureNetwork, image_size: int) -> ReferenceStats:
    """The real images' statistics: read from --ref-stats, or computed from --data."""
    if cfg.ref_stats:
        reference = ReferenceStats.load(cfg.ref_stats, network)
        reference.check_image_size(cfg.ref_stats, image_size)
        return reference
    return reference_stats(network, cfg.data, cfg.n_real or cfg.n, cfg.batch_size, cfg.workers, image_size=image_size)


def run_evaluation(cfg: EvalConfig) -> str:
    """tritonsagan-eval: the real statistics (saved with --save-ref-stats), and the generator's metrics
    into cfg.out. What it did, in a line."""
    if cfg.weights is None and cfg.save_ref_stats is None:
        raise EvalError("give --weights (a generator to evaluate), or --save-ref-stats to only compute real statistics")
    if cfg.n < 2 or cfg.batch_size < 1 or cfg.nearest_k < 0:
        raise EvalError("--n must be at least 2, --batch-size positive and --nearest-k >= 0")
    if cfg.image_size is not None:
        check_image_size("--image-size", cfg.image_size)
    device = resolve_device(cfg.device)
    G = load_generator(cfg.weights, device=device) if cfg.weights else None
    image_size = G.config.image_size if G else cfg.image_size or IMAGE_SIZE
    if cfg.image_size and cfg.image_size != image_size:
        raise EvalError(
            f"--image-size {cfg.image_size}: {cfg.weights} draws {image_size}x{image_size} images; its real images must be that size"
        )
    network = FeatureNetwork(find_feature_weights(cfg.fid_weights or None), device)
    print(f"feature network: {network.describe()}", file=sys.stderr)
    reference = _reference(cfg, network, image_size)
    wrote_stats = f"wrote real-image statistics to {cfg.save_ref_stats}"
    if cfg.save_ref_stats:
        reference.save(cfg.save_ref_stats)
    if G is None:
        return wrote_stats
    if cfg.save_ref_stats:
        print(wrote_stats, file=sys.stderr)
    result = evaluate(G, reference, network, cfg)
    result["weights"] = str(cfg.weights)
    atomic_write_json(cfg.out, result)
    line = f"FID {result['fid']:.3f}  KID {result['kid']:.5f} +- {result['kid_std']:.5f}"
    if "is" in result:
        line += f"  IS {result['is']:.3f} +- {result['is_std']:.3f}"
    if cfg.nearest_k:
        line += "  " + "  ".join(f"{key} {result[key]:.3f}" for key in ("precision", "recall", "density", "coverage"))
    print(line)
    return f"wrote {cfg.out}"


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), lambda args: run_evaluation(build_config(EvalConfig, args)), argv)


if __name__ == "__main__":
    sys.exit(main())
