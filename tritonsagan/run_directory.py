"""A training run's folder: the one owner of its layout, and of reading a generator out of it.

<run>/config.json                  the run's resolved TrainConfig, as its latest start or resume set it
<run>/config_history.jsonl         one record per start or resume: the step, the settings changed, the
                                   device, the config
<run>/train.lock                   locked by the training process working in the run (holds its pid)
<run>/metrics.jsonl, curves.png    one record per log step (and per FID evaluation); their plot
<run>/tensorboard/                 event files (--tensorboard)
<run>/samples/step_N.png           the fixed latents through G (eval mode); step_N_ema.png through G_ema
<run>/checkpoints/step_N.safetensors, best.safetensors   training checkpoints (tritonsagan.checkpoint),
                                   each with a .json sidecar; best is the lowest FID so far
<run>/generator/                   G_ema as save_pretrained writes it, refreshed at every checkpoint
<run>/fid_reference.safetensors    the real-image statistics of --fid-every
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from pathlib import Path

import torch

from tritonsagan.models import Generator
from tritonsagan.models.pretrained import WEIGHTS_NAME

from .atomic_write import atomic_write_bytes, atomic_write_json
from .checkpoint import is_checkpoint, latest_checkpoint, read_checkpoint, read_sidecar, tensors_under
from .errors import ConfigError, TritonsaganError
from .shipped import describe_shipped, shipped_weights
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
        self.config_history = self.root / "config_history.jsonl"
        self.lock = self.root / "train.lock"
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

    def write_config(self, config: dict, step: int, changed: dict[str, tuple], device: str) -> None:
        """config.json: the settings in force from `step` on; config_history.jsonl gains their record,
        with the device (its name) that trains from there."""
        atomic_write_json(self.config, config)
        record = {
            "step": step,
            "changed": {name: list(values) for name, values in changed.items()},
            "device": device,
            "config": config,
        }
        history = self.config_history.read_text() if self.config_history.is_file() else ""
        atomic_write_bytes(self.config_history, (history + json.dumps(record) + "\n").encode())

    def read_config_history(self) -> list[dict]:
        """The records write_config appended, oldest first (one per start or resume)."""
        return [json.loads(line) for line in self.config_history.read_text().splitlines() if line.strip()]


class RunInUse(TritonsaganError, RuntimeError):
    """Another process is training in this run directory."""


class RunLock:
    """An exclusive lock on <run>/train.lock for as long as a training process works in the run. It is
    an OS lock (flock), which the kernel releases when the process ends in any way, so it is never
    stale; the file holds the pid of the holder, for the message a second process gets."""

    def __init__(self, run: RunDirectory) -> None:
        try:
            run.root.mkdir(parents=True, exist_ok=True)
            self.file = run.lock.open("a+")
        except OSError as err:
            raise ConfigError(f"--out {run.root}: cannot write there ({err.strerror or err})") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise RunInUse(
                f"{run.root} is in use by another training process (pid {holder}); wait for it to end or stop it, or train into another --out"
            ) from None
        self.file.truncate(0)
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        self.file.close()


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


def load_generator(
    path: str | os.PathLike, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> Generator:
    """A Generator in eval mode from a save_pretrained directory, its model.safetensors, a training
    checkpoint (its G_ema), a run directory, or the name of weights shipped in the package
    (tritonsagan.shipped; a file or folder of that name here comes first).

    For a run directory this is G_ema: its exported `generator/`, else the newest checkpoint's G_ema.
    """
    path = Path(path) if Path(path).exists() else shipped_weights(path) or Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"weights not found: {path} (no such file or folder, nor shipped weights of that name; {describe_shipped()})"
        )
    if path.is_file() and path.name != WEIGHTS_NAME and is_checkpoint(path):
        G = generator_from_checkpoint(path)
    elif path.is_dir() and not (path / WEIGHTS_NAME).is_file():
        run = RunDirectory(path)
        if (run.generator / WEIGHTS_NAME).is_file():
            G = Generator.from_pretrained(run.generator)
        elif (checkpoint := run.latest_checkpoint()) is not None:
            G = generator_from_checkpoint(checkpoint)
        else:
            raise FileNotFoundError(
                f"{path}: no {WEIGHTS_NAME}, {run.generator.name}/ or {run.checkpoints.name}/ inside"
            )
    else:
        G = Generator.from_pretrained(path)
    return G.to(device or "cpu", dtype).eval()
