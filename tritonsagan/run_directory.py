"""A training run's folder: the one owner of its layout, and of reading a generator out of it.

    <run>/config.json                  the run's resolved TrainConfig
    <run>/metrics.jsonl, curves.png    one record per log step (and per FID evaluation); their plot
    <run>/tensorboard/                 event files (--tensorboard)
    <run>/samples/step_N.png           the fixed latents through G (eval mode); step_N_ema.png through G_ema
    <run>/checkpoints/step_N.safetensors, best.safetensors   training checkpoints (tritonsagan.checkpoint),
                                       each with a .json sidecar; best is the lowest FID so far
    <run>/generator/                   G_ema as save_pretrained writes it, refreshed at every checkpoint
    <run>/fid_reference.safetensors    the real-image statistics of --fid-every
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from tritonsagan.models import Generator
from tritonsagan.models.pretrained import WEIGHTS_NAME

from .checkpoint import latest_checkpoint, read_checkpoint, read_sidecar, sidecar_path, tensors_under
from .weights_io import WeightsError, check_state_dict

# What a run's checkpoints hold besides G, D and the optimisers: the generator to sample from, and
# the config to rebuild it with.
EMA_GENERATOR = "G_ema"
GENERATOR_CONFIG = "generator_config"


class RunDirectory:
    """Paths inside one run directory (nothing is created or read until asked)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.metrics = self.root / "metrics.jsonl"
        self.curves = self.root / "curves.png"
        self.tensorboard = self.root / "tensorboard"
        self.samples = self.root / "samples"
        self.checkpoints = self.root / "checkpoints"
        self.best_checkpoint = self.checkpoints / "best.safetensors"
        self.generator = self.root / "generator"
        self.fid_reference = self.root / "fid_reference.safetensors"

    def sample_grid(self, step: int, ema: bool) -> Path:
        return self.samples / f"step_{step:07d}{'_ema' if ema else ''}.png"

    def sample_grids(self, ema: bool) -> list[Path]:
        """The grids written so far of G_ema (ema) or of G, oldest first."""
        return sorted(p for p in self.samples.glob("step_*.png") if p.stem.endswith("_ema") == ema)

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.checkpoints)

    def best_fid(self) -> float:
        """FID of the best checkpoint so far (infinity when there is none)."""
        return read_sidecar(self.best_checkpoint)["fid"] if self.best_checkpoint.is_file() else math.inf


def generator_from_checkpoint(path: Path) -> Generator:
    """The G_ema of a training checkpoint, rebuilt from the generator config in its metadata."""
    tensors, meta = read_checkpoint(path)
    config = meta.get(GENERATOR_CONFIG)
    if not config:
        raise WeightsError(f"{path}: not a tritonsagan training checkpoint (no generator config in its metadata)")
    G = Generator(**config)
    state = tensors_under(tensors, EMA_GENERATOR)
    check_state_dict(path, G, state)
    G.load_state_dict(state)
    return G


def load_generator(path: str | os.PathLike, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Generator:
    """A Generator in eval mode from a save_pretrained directory, its model.safetensors, a training
    checkpoint (its G_ema), or a run directory.

    For a run directory this is G_ema: its exported `generator/`, else the newest checkpoint's G_ema.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    if path.is_file() and path.name != WEIGHTS_NAME and sidecar_path(path).is_file():
        G = generator_from_checkpoint(path)
    elif path.is_dir() and not (path / WEIGHTS_NAME).is_file():
        run = RunDirectory(path)
        if (run.generator / WEIGHTS_NAME).is_file():
            G = Generator.from_pretrained(run.generator)
        elif (checkpoint := run.latest_checkpoint()) is not None:
            G = generator_from_checkpoint(checkpoint)
        else:
            raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME}, {run.generator.name}/ or {run.checkpoints.name}/ inside")
    else:
        G = Generator.from_pretrained(path)
    return G.to(device or "cpu", dtype).eval()
