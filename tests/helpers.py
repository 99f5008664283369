"""What the tests share: the float64 references, the attention shapes, relative error, image files,
tiny training runs, a stand-in FID network."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import load_file
from tritonsagan.kernels import attention_naive

from tritonsagan.checkpoint import latest_checkpoint
from tritonsagan.step import TrainingStep
from tritonsagan.train import TrainConfig

# (B, N_q, N_k, d_qk, d_v) every attention path is checked at; each test file adds its own extremes.
ATTENTION_SHAPES = [
    (2, 1024, 256, 32, 128),  # G at 32x32
    (2, 1024, 256, 16, 64),  # D at 32x32
    (3, 49, 49, 8, 40),  # 7x7: nothing a power of two or a multiple of the block
]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (NaN anywhere gives NaN, which fails any bound)."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


def attention_float64(q, k, v, grad_out, scale: float):
    """The ground truth: softmax(scale q k^T) v by bmm + softmax in float64, its log-sum-exp per
    query, and the gradients of q, k, v for grad_out."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = attention_naive(q64, k64, v64, scale)
    lse = torch.logsumexp(scale * q64 @ k64.transpose(1, 2), dim=-1)
    grads = torch.autograd.grad(out, (q64, k64, v64), grad_out.double())
    return out.detach(), lse.detach(), grads


def write_image(path: Path, seed: int, size: tuple[int, int] = (70, 50), mode: str = "RGB") -> None:
    """A noise image of `size` (width, height) in `mode` (L, RGB or RGBA), in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode).save(path)


def image_folder(root: Path, classes: tuple[str, ...] = ("cats", "dogs", "owls"), per_class: int = 4) -> Path:
    """root/<class>/<i>.png: small noise photos of assorted sizes, `per_class` in each class folder."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{i}.png", 10 * c + i, size=(60 + 7 * i, 50 + 5 * c))
    return root


# A conditional generator small enough for a CPU test, with its attention block (at 16x16 of 32x32).
SMALL_GENERATOR = dict(ch=8, num_classes=3, image_size=32, attn_res=16)

# A training run small enough for a CPU test: a few steps of width 8, every output every 2 steps.
TINY = dict(ch=8, batch_size=4, workers=0, num_samples=4, log_every=2, sample_every=2, save_every=2, compile=False)


def tiny_config(out, **overrides) -> TrainConfig:
    return TrainConfig(out=str(out), **{**TINY, **overrides})


def tiny_step(num_classes: int = 0, **overrides) -> TrainingStep:
    """The training step of a new CPU run at TINY's sizes, with no run directory or dataset."""
    return TrainingStep.fresh(TrainConfig(**{**TINY, **overrides}), num_classes)


def cli_flags(**overrides) -> list[str]:
    """TINY (with overrides) as tritonsagan-train flags."""
    flags = []
    for key, value in {**TINY, **overrides}.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a run's newest checkpoint."""
    return load_file(latest_checkpoint(run / "checkpoints"))


STAND_IN_FEATURES = 12


class StandIn(nn.Module):
    """A stand-in FID network: random convolutional features of 48x48 inputs, plus class logits (so
    IS is computed too)."""

    def __init__(self) -> None:
        super().__init__()
        self.input_size = 48  # TorchScript infers the attribute's type (this file's annotations are strings)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.Conv2d(8, STAND_IN_FEATURES, 3, stride=2), nn.ReLU()
        )
        self.head = nn.Linear(STAND_IN_FEATURES, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x).mean(dim=(2, 3))
        return features, self.head(features)


def stand_in_network(path: Path, seed: int = 0) -> Path:
    """StandIn with the weights of `seed`, saved as TorchScript at path (what --fid-weights reads)."""
    torch.manual_seed(seed)
    torch.jit.script(StandIn()).save(str(path))
    return path


def free_port() -> int:
    """A TCP port on localhost nothing listens on (for a torchrun rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]
