"""The training config: TrainConfig (every tritonsagan-train flag, its default and help), its checks
and what the device decides (resolve_config), the models' configs it gives, and what may change when a
run resumes."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from tritonsagan.models import DiscriminatorConfig, GeneratorConfig, TuningConfig
from tritonsagan.models.config import (
    ATTENTION_RESOLUTION,
    BASE_WIDTH,
    BIAS_INIT,
    BIAS_INITS,
    CLASS_BN_INIT,
    CLASS_BN_INITS,
    G_PADDINGS,
    IMAGE_SIZE,
    IMAGE_SIZES,
    INIT,
    INITS,
    NOISE_STRENGTH_GAIN,
    Z_DIM,
    check_image_size,
)

from .config_flags import config_field, flag_name, on_off
from .data import ImageLimits
from .diffaug import parse_policy
from .distributed import Distributed
from .errors import ConfigError
from .feature_network import find_feature_weights
from .shared_fields import (
    device_field,
    fid_weights_field,
    loader_workers_field,
    max_aspect_ratio_field,
    min_image_side_field,
)

DIFFAUG_BUILTIN = "color,translation,cutout"
COMPILE_SCOPES = ("loss", "step")
COMPILE_MODES = ("default", "max-autotune", "reduce-overhead")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # fp32: no autocast
BF16_CAPABILITY = (8, 0)  # the first NVIDIA generation with bfloat16 (Ampere)


@dataclass
class TrainConfig:
    data: str = config_field(
        "builtin",
        "image folder, packed dataset (tritonsagan-prepare), or 'builtin' for the offline photo stream from scikit-image's wheel",
    )
    out: str = config_field("runs/sagan", "run directory: config, metrics, samples, checkpoints, generator weights")
    steps: int = config_field(1_000_000, "total generator steps")
    max_minutes: float = config_field(
        0.0,
        "stop after this many minutes of training, with a checkpoint, to continue later with the same command (0: no limit)",
    )
    batch_size: int = config_field(256, "global batch size (split across ranks)")
    image_size: int = config_field(
        IMAGE_SIZE,
        f"side of the images G draws and D reads: {', '.join(map(str, IMAGE_SIZES))}, each with BigGAN-PyTorch's widths for that size "
        "(128: the official SAGAN model); at 32, D has no 32x32 features: give --attn-res 16",
    )
    ch: int = config_field(BASE_WIDTH, "base channel width of G and D")
    z_dim: int = config_field(Z_DIM, "latent size")
    conditional: bool = config_field(False, "class-conditional (sub-folders are classes; builtin: one class per photo)")
    attn_res: int = config_field(ATTENTION_RESOLUTION, "resolution of the self-attention block in G and D (0: none)")
    init: str = config_field(
        INIT,
        "initialisation of every G and D weight: xavier (the official code's uniform) or orthogonal (BigGAN-PyTorch's)",
        choices=INITS,
    )
    bias_init: str = config_field(
        BIAS_INIT,
        "initial conv and linear biases of G and D: zeros (the official code's) or uniform (torch's default, kept by BigGAN-PyTorch)",
        choices=BIAS_INITS,
    )
    class_bn_init: str = config_field(
        CLASS_BN_INIT,
        "G's per-class batch-norm gains and biases at the start: random (1 + e and e, e an orthogonal per-class embedding, "
        "BigGAN-PyTorch's; every class learned sooner on the learning benchmark) or identity (1 and 0, the official code's)",
        choices=CLASS_BN_INITS,
    )
    noise_inputs: bool = config_field(
        GeneratorConfig.noise_inputs,
        "G adds per-pixel noise after each up-block conv3x3, scaled by a learned per-channel strength that starts at 0 "
        f"and learns {NOISE_STRENGTH_GAIN:g} times faster than G's other weights (StyleGAN's noise inputs; not in SAGAN), "
        "so that textures need not come out at the same places in every image",
    )
    padding: str = config_field(
        GeneratorConfig.padding,
        "how G's 3x3 convolutions pad: zeros (SAGAN's) or reflect (not in SAGAN: G then has no border to read its place "
        "in the image from)",
        choices=G_PADDINGS,
    )
    d_sn_in_g_step: bool = config_field(
        True,
        "update D's spectral-norm vectors in the G step too (D in train mode there, as BigGAN-PyTorch's; off: the official code's D in eval mode)",
    )
    lr_g: float = config_field(1e-4, "generator learning rate")
    lr_d: float = config_field(4e-4, "discriminator learning rate")
    beta1: float = config_field(0.0, "Adam beta1")
    beta2: float = config_field(0.9, "Adam beta2")
    n_dis: int = config_field(1, "discriminator steps per generator step")
    mode_seeking: float = config_field(
        0.0,
        "weight of MSGAN's mode-seeking term in G's loss (Mao et al. 2019): the G batch's halves share their classes, "
        "and G is penalised by 1 / (paired images' mean distance over their latents'); 0: off, the paper's SAGAN",
    )
    ema_decay: float = config_field(0.9999, "decay of the moving average of G's weights")
    ema_start: int = config_field(20_000, "step from which G_ema averages; before it, G_ema copies G")
    seed: int = config_field(0, "seed of the initialisation, the data stream, the latents")
    device: str = device_field()
    compile: bool | None = config_field(None, "torch.compile the loss computations (default: on for CUDA, off for CPU)")
    precision: str = config_field(
        "auto",
        "the step's arithmetic: bf16 (bfloat16 autocast), fp16 (float16 autocast with loss scaling: torch.amp.GradScaler "
        "for G and D, skipped steps counted in metrics.jsonl) or fp32; auto: bf16 on GPUs that have it "
        "(compute capability 8.0 and up), fp16 on older GPUs, fp32 on the CPU",
        choices=PRECISIONS,
    )
    accumulate: int = config_field(
        1,
        "compute each D and G step in this many micro-batches of each rank's batch, summing their gradients: the same "
        "batch in less memory (G's batch-norm statistics are then per micro-batch)",
    )
    crop: str = config_field(
        "random", "crop of folder images after the shorter-side resize", choices=("random", "center")
    )
    min_image_side: int = min_image_side_field()
    max_aspect_ratio: float = max_aspect_ratio_field()
    workers: int = loader_workers_field()
    log_every: int = config_field(50, "steps between metrics.jsonl records")
    sample_every: int = config_field(1000, "steps between sample grids")
    save_every: int = config_field(1000, "steps between checkpoints")
    keep_checkpoints: int = config_field(3, "how many checkpoints to keep")
    resume: str = config_field(
        "auto",
        "auto (the newest checkpoint in the run directory that passes its checksum; damaged ones are set aside), never, or a checkpoint path",
    )
    num_samples: int = config_field(64, "images per sample grid")
    sync_bn: bool = config_field(False, "synchronise G's batch-norm statistics across ranks (CUDA)")
    deterministic: bool = config_field(False, "torch.use_deterministic_algorithms(True)")
    fid_every: int = config_field(
        0,
        "steps between FID evaluations of G_ema, logged to metrics.jsonl; the best is kept as checkpoints/best (0: never)",
    )
    fid_n: int = config_field(5000, "generated and real images per FID evaluation")
    fid_weights: str = fid_weights_field()
    diffaug: str = config_field(
        "auto",
        "DiffAugment policy applied to every image D sees: comma list of color, translation, cutout; '' for none; "
        f"auto: {DIFFAUG_BUILTIN} for --data builtin (17 photos: D overfits without it), none for folders",
    )
    tensorboard: bool = config_field(
        False, "also write TensorBoard event files to <out>/tensorboard (needs tensorboardX, the tensorboard extra)"
    )
    # Tunings: each changes how the step computes, not what (same results up to float rounding); off
    # until a GPU report shows it faster (tritonsagan-bench's tuning variants).
    compile_scope: str = config_field(
        "loss",
        "what --compile compiles: loss (the loss computations with their backward) or step (also the optimiser steps and "
        "the EMA update, with the latents and DiffAugment draws made on the device so the step never waits on the host)",
        choices=COMPILE_SCOPES,
    )
    compile_mode: str = config_field(
        "default",
        "torch.compile mode: default (torch's), max-autotune (autotuned kernels) or reduce-overhead (CUDA graphs)",
        choices=COMPILE_MODES,
    )
    fused_adam: bool = config_field(False, "Adam's fused implementation on CUDA (foreach elsewhere)")
    channels_last: bool | None = config_field(
        None,
        "convolutions on channels_last (NHWC) activations (default: on for the CPU, whose convolutions are faster so, "
        "off for CUDA)",
    )
    fused_qkv: bool = config_field(
        TuningConfig.fused_qkv,
        "the attention block's theta, phi, g 1x1 convolutions as one, each weight still normalised on its own",
    )
    grouped_sn: bool = config_field(
        TuningConfig.grouped_sn,
        "the power iteration of all SN layers of a model in one grouped update (Triton: 3 launches instead of 3 per layer)",
    )
    sn_autocast_dtype: bool = config_field(
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
    "noise_inputs",
    "padding",
    "seed",
    "batch_size",
    "n_dis",
    "crop",
    "min_image_side",
    "max_aspect_ratio",
)
# What a checkpoint written before a setting existed ran with.
BEFORE_SETTING = {
    "image_size": IMAGE_SIZE,
    "bias_init": "zeros",
    "mode_seeking": 0.0,
    "accumulate": 1,
    "noise_inputs": False,
    "padding": "zeros",
}
INVOCATION = ("out", "resume")  # how a command reaches the run, not what the run does


def resolve_diffaug(policy: str, data: str) -> str:
    """--diffaug auto: the three augmentations on the built-in photos, none on image folders."""
    if policy == "auto":
        return DIFFAUG_BUILTIN if data == "builtin" else ""
    parse_policy(policy)  # a clear error for a bad name
    return policy


def model_configs(cfg: TrainConfig, num_classes: int) -> tuple[GeneratorConfig, DiscriminatorConfig]:
    """G's and D's configs for a run: the one mapping from the training config to the models'."""
    shared = dict(
        ch=cfg.ch,
        num_classes=num_classes,
        attn_res=cfg.attn_res,
        image_size=cfg.image_size,
        init=cfg.init,
        bias_init=cfg.bias_init,
    )
    configs, problems = [], []
    for build in (
        lambda: GeneratorConfig(
            **shared,
            z_dim=cfg.z_dim,
            class_bn_init=cfg.class_bn_init,
            noise_inputs=cfg.noise_inputs,
            padding=cfg.padding,
        ),
        lambda: DiscriminatorConfig(**shared),
    ):
        try:
            configs.append(build())
        except ValueError as err:  # each model's problem, said at once
            problems.append(str(err))
    if problems:
        raise ConfigError("; ".join(problems))
    return configs[0], configs[1]


def resolve_config(cfg: TrainConfig, world: Distributed) -> TrainConfig:
    """The config checked (every problem named at once, by its flag, before anything is written)
    with what it leaves to the device or the data decided: the device, compile on for CUDA,
    channels_last on for the CPU, the precision, the --diffaug policy. config.json records these resolved values."""
    problems = _range_problems(cfg) + _setting_problems(cfg, world)
    diffaug, precision = cfg.diffaug, cfg.precision
    try:
        diffaug = resolve_diffaug(cfg.diffaug, cfg.data)
    except ConfigError as err:
        problems.append(str(err))
    try:
        precision = resolve_precision(cfg.precision, world.device)
    except ConfigError as err:
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
        channels_last=not on_cuda if cfg.channels_last is None else cfg.channels_last,
        precision=precision,
        diffaug=diffaug,
    )


def has_bf16(device: torch.device) -> bool:
    """Whether the device computes in bfloat16: the CPU does, NVIDIA GPUs from Ampere on."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= BF16_CAPABILITY


def resolve_precision(precision: str, device: torch.device) -> str:
    """--precision auto as the device decides it: bf16 on GPUs that have it, fp16 on older GPUs, fp32
    on the CPU; bf16 asked of a GPU without it is a ConfigError."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if has_bf16(device) else "fp16"
    if precision == "bf16" and not has_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise ConfigError(
            f"--precision bf16: {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no bfloat16; "
            "use --precision fp16 (loss-scaled) or auto"
        )
    return precision


def upgrade_saved_config(values: dict) -> dict:
    """A config saved before --precision (config.json, a checkpoint, a --config file) as this version
    reads it: its bf16 (on, off or None: decided by the device) as the precision."""
    if "bf16" not in values:
        return values
    values = dict(values)
    bf16 = values.pop("bf16")
    values.setdefault("precision", "auto" if bf16 is None else "bf16" if bf16 else "fp32")
    return values


POSITIVE = (
    "steps",
    "batch_size",
    "n_dis",
    "accumulate",
    "log_every",
    "sample_every",
    "save_every",
    "keep_checkpoints",
    "num_samples",
)
NON_NEGATIVE = ("seed", "workers", "ema_start", "fid_every")


def _range_problems(cfg: TrainConfig) -> list[str]:
    """Each number outside its range, said by its flag."""
    problems = []
    for name in POSITIVE:
        if getattr(cfg, name) < 1:
            problems.append(f"{flag_name(name)} must be positive, got {getattr(cfg, name)}")
    for name in NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            problems.append(f"{flag_name(name)} must be >= 0, got {getattr(cfg, name)}")
    for name in ("lr_g", "lr_d"):
        if not 0 < getattr(cfg, name) < math.inf:
            problems.append(f"{flag_name(name)} must be a positive number, got {getattr(cfg, name)}")
    for name in ("beta1", "beta2", "ema_decay"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            problems.append(f"{flag_name(name)} must be in [0, 1), got {getattr(cfg, name)}")
    if not 0 <= cfg.mode_seeking < math.inf:
        problems.append(f"--mode-seeking must be a number >= 0, got {cfg.mode_seeking}")
    if not cfg.max_minutes >= 0:
        problems.append(f"--max-minutes must be >= 0, got {cfg.max_minutes}")
    if cfg.fid_n < 2:
        problems.append(f"--fid-n must be at least 2, got {cfg.fid_n}")
    return problems


def _setting_problems(cfg: TrainConfig, world: Distributed) -> list[str]:
    """Each setting the ranks, the device, the installed packages or the other settings rule out."""
    problems = []
    per_rank = cfg.batch_size // world.world_size
    micro = per_rank // cfg.accumulate if cfg.accumulate >= 1 else per_rank
    if cfg.batch_size % world.world_size:
        problems.append(f"--batch-size {cfg.batch_size} must divide evenly over {world.world_size} ranks")
    elif cfg.accumulate >= 1 and per_rank % cfg.accumulate:
        problems.append(
            f"--accumulate {cfg.accumulate} must divide each rank's batch: --batch-size {cfg.batch_size} gives {per_rank} "
            f"per rank ({world.world_size} rank(s))"
        )
    elif cfg.mode_seeking and micro % 2:
        problems.append(
            f"--mode-seeking pairs the images of each micro-batch: --batch-size {cfg.batch_size} with --accumulate "
            f"{cfg.accumulate} gives {micro} per rank and micro-batch ({world.world_size} rank(s)), which must be even"
        )
    if cfg.sync_bn and world.device.type != "cuda":
        problems.append("--sync-bn needs CUDA (SyncBatchNorm has no CPU implementation)")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        problems.append(f"--out {cfg.out} is a file; a run directory is a folder")
    if cfg.tensorboard and importlib.util.find_spec("tensorboardX") is None:
        problems.append("--tensorboard needs tensorboardX: pip install tensorboardX (the package's tensorboard extra)")
    checks = [lambda: cfg.image_limits]
    if cfg.image_size in IMAGE_SIZES:  # else the flag's own message, not the model configs' as well
        checks.append(lambda: model_configs(cfg, num_classes=0))
    else:
        checks.append(lambda: check_image_size("--image-size", cfg.image_size))
    if cfg.fid_every:
        checks.append(lambda: find_feature_weights(cfg.fid_weights or None))  # before the run directory is made
    for check in checks:
        try:
            check()
        except ValueError as err:  # DataError, EvalError, and the model configs' errors
            problems.append(str(err))
    return problems


def settings_changed_on_resume(checkpoint: Path, saved: dict, current: dict) -> dict[str, tuple]:
    """{setting: (checkpoint's value, this run's)} for each setting that differs; a ConfigError naming
    every RUN_IDENTITY setting that does."""
    saved = {**BEFORE_SETTING, **upgrade_saved_config(saved)}
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


def describe_device_settings(compile: bool, precision: str, diffaug: str) -> str:
    """The settings decided for the device (config.json records them resolved), as logs and model cards say them."""
    return f"compile {on_off(compile)}, precision {precision}, DiffAugment {diffaug or 'off'}"
