"""The training step: n_dis discriminator updates, one generator update and the EMA of G, with the
hinge losses (and, when asked, MSGAN's mode-seeking term), the latent and DiffAugment draws and the compile wrapping.

It is built from the models, their optimisers and a resolved TrainConfig (train_config.resolve_config);
it knows nothing of run directories, checkpoints or datasets: `step(n, batches)` takes the real batches
and returns the losses. tritonsagan.train's loop feeds it; benchmarks and tests call it directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from tritonsagan.kernels import device_generation
from tritonsagan.models import Discriminator, Generator, frozen_spectral_norm, set_tuning

from .diffaug import augment, draw, parse_policy
from .distributed import Distributed
from .ema import EMA
from .errors import ConfigError
from .seeding import noise_inputs_seeded, stream_generator, stream_seed
from .train_config import AUTOCAST_DTYPES, TrainConfig, model_configs, resolve_config

RealBatch = tuple[torch.Tensor, torch.Tensor | None]  # images in [-1, 1] and their labels (None: unconditional)

LATENT_STREAM = 3  # the last counter of a step's latent and DiffAugment stream (tritonsagan.seeding)
NOISE_STREAM = 17  # the last counter of a step's noise-input stream
MODE_SEEKING_EPS = 1e-5  # MSGAN's: the penalty stays finite for a G that ignores its latent entirely


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def mode_seeking_penalty(fake: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """MSGAN's term (Mao et al. 2019) over a batch whose two halves share their labels: 1 / (how far
    paired images are apart over how far their latents are), large where G draws one image whatever
    the latent."""
    images_a, images_b = fake.float().chunk(2)
    z_a, z_b = z.float().chunk(2)
    ratio = (images_a - images_b).abs().mean() / (z_a - z_b).abs().mean()
    return 1.0 / (ratio + MODE_SEEKING_EPS)


def micro_batches(t: torch.Tensor, n: int, halves: int = 1) -> list[torch.Tensor]:
    """t's rows in n micro-batches, in order. With halves=2 each micro-batch takes its share of both
    halves (the real and the fake images of D's pass; the latent pairs of the mode-seeking term)."""
    if n == 1:
        return [t]
    parts = [half.chunk(n) for half in t.chunk(halves)]
    return [torch.cat([part[k] for part in parts]) for k in range(n)]


class LossScaling:
    """fp16's loss scaling: a torch.amp.GradScaler for D and one for G (disabled, and so doing nothing,
    at other precisions), and how many optimiser steps each skipped for an Inf or NaN gradient."""

    NAMES = ("D", "G")

    def __init__(self, device_type: str, enabled: bool) -> None:
        self.scalers = {name: torch.amp.GradScaler(device_type, enabled=enabled) for name in self.NAMES}
        self.skipped_steps = dict.fromkeys(self.NAMES, 0)

    @property
    def enabled(self) -> bool:
        return self.scalers["D"].is_enabled()

    def scale(self, name: str, loss: torch.Tensor) -> torch.Tensor:
        return self.scalers[name].scale(loss)

    def step(self, name: str, optimizer: torch.optim.Optimizer, optimizer_step: Callable[[], object]) -> None:
        """The optimiser's step (`optimizer_step`, maybe compiled), or under fp16 the scaler's, which
        calls the optimiser itself (uncompiled): unscaled gradients, the step skipped when one is not
        finite, the scale updated. A skip is a scale that fell."""
        scaler = self.scalers[name]
        if not scaler.is_enabled():
            optimizer_step()
            return
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        self.skipped_steps[name] += scaler.get_scale() < scale

    def state_dict(self) -> dict[str, dict]:
        """JSON-ready: each scaler's state (while enabled) and its skipped steps."""
        return {
            name: {**scaler.state_dict(), "skipped_steps": self.skipped_steps[name]}
            for name, scaler in self.scalers.items()
        }

    def load_state_dict(self, state: dict[str, dict]) -> None:
        """A checkpoint's state; a scaler saved by a run at another precision (no scale) starts afresh."""
        for name, scaler in self.scalers.items():
            saved = dict(state[name])
            self.skipped_steps[name] = saved.pop("skipped_steps")
            if saved and scaler.is_enabled():
                scaler.load_state_dict(saved)


@dataclass
class TrainingModels:
    """What a step trains: G, D, G's moving average, the two Adam optimisers and their loss scaling."""

    G: Generator
    D: Discriminator
    ema: EMA
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    loss_scaling: LossScaling

    @classmethod
    def build(cls, cfg: TrainConfig, num_classes: int, world: Distributed) -> TrainingModels:
        """Fresh models, initialised from cfg.seed (the same on every rank), on the rank's device."""
        torch.manual_seed(cfg.seed)
        G_config, D_config = model_configs(cfg, num_classes)
        G, D = Generator(G_config).to(world.device), Discriminator(D_config).to(world.device)
        for model in (G, D):
            set_tuning(model, cfg.tuning)
        # G_ema keeps plain batch norms: rank 0 alone recomputes its statistics, which a synchronised one would wait on the others for.
        ema = EMA(G, cfg.ema_decay, cfg.ema_start, cfg.batch_size // world.world_size, cfg.seed)
        if cfg.sync_bn:
            G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G)
        implementation = {}
        if cfg.fused_adam:  # one kernel per step on CUDA; the multi-tensor path elsewhere
            implementation = {"fused": True} if world.device.type == "cuda" else {"foreach": True}
        opt_g, opt_d = (
            torch.optim.Adam(model.parameters(), lr=lr, betas=(cfg.beta1, cfg.beta2), **implementation)
            for model, lr in ((G, cfg.lr_g), (D, cfg.lr_d))
        )
        return cls(G, D, ema, opt_g, opt_d, LossScaling(world.device.type, enabled=cfg.precision == "fp16"))


class TrainingStep:
    """`step(n, batches)`: step n of a run (0 for the first), on one real batch per D update. Under
    torchrun, G and D train wrapped in DistributedDataParallel and rank 0's buffers are broadcast
    after every step."""

    def __init__(self, cfg: TrainConfig, models: TrainingModels, world: Distributed) -> None:
        if cfg.compile is None or cfg.channels_last is None or cfg.precision == "auto" or cfg.diffaug == "auto":
            raise ConfigError("TrainingStep takes a resolved config: pass it through train_config.resolve_config")
        self.cfg, self.world = cfg, world
        G, D, ema, opt_g, opt_d = models.G, models.D, models.ema, models.opt_g, models.opt_d
        self.G, self.D, self.ema, self.opt_g, self.opt_d = G, D, ema, opt_g, opt_d
        self.loss_scaling = models.loss_scaling
        if world.device.type == "cuda":  # read once before torch.compile traces the kernels' dispatch
            device_generation(world.device)
        self.autocast_dtype = AUTOCAST_DTYPES.get(cfg.precision)
        self.per_rank_batch = cfg.batch_size // self.world.world_size
        self.num_classes = G.config.num_classes
        self.diffaug = parse_policy(cfg.diffaug)
        if self.world.world_size > 1:  # buffers are broadcast by hand after every step, not at each forward
            self.G_train = DistributedDataParallel(G, broadcast_buffers=False)
            self.D_train = DistributedDataParallel(D, broadcast_buffers=False)
        else:
            self.G_train, self.D_train = G, D
        whole_step = cfg.compile and cfg.compile_scope == "step"
        self.d_losses, self.g_loss = (
            self._compiled(self._d_losses, cfg.compile),
            self._compiled(self._g_loss, cfg.compile),
        )
        self.opt_d_step, self.opt_g_step = (
            self._compiled(opt_d.step, whole_step),
            self._compiled(opt_g.step, whole_step),
        )
        self.ema_average = self._compiled(ema.average, whole_step)
        # Drawn on the device, the latents never wait for a host-to-device copy (other numbers than
        # the CPU generator's on CUDA; the same on CPU).
        self.draw_device = self.world.device if whole_step else torch.device("cpu")

    @classmethod
    def fresh(cls, cfg: TrainConfig, num_classes: int = 0, device: str = "cpu") -> TrainingStep:
        """The step of a new single-process run: cfg resolved for `device`, fresh models from cfg.seed."""
        world = Distributed(device=torch.device(device))
        cfg = resolve_config(cfg, world)
        return cls(cfg, TrainingModels.build(cfg, num_classes, world), world)

    def _compiled(self, fn: Callable, enabled: bool) -> Callable:
        if not enabled:
            return fn
        return torch.compile(fn, mode=None if self.cfg.compile_mode == "default" else self.cfg.compile_mode)

    def __call__(self, step: int, batches: Sequence[RealBatch]) -> dict[str, torch.Tensor]:
        """D updates (one per real batch), the G update, the EMA of G at step + 1; the last D update's
        loss and mean logits and the G loss, on the device. G's noise inputs, where it has them, are
        drawn from (seed, step, rank) as the latents are."""
        with noise_inputs_seeded(self.G, stream_seed(self.cfg.seed, step, self.world.rank, NOISE_STREAM)):
            return self._step(step, batches)

    def _step(self, step: int, batches: Sequence[RealBatch]) -> dict[str, torch.Tensor]:
        if self.cfg.compile and self.cfg.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are done with: CUDA graphs may reuse their memory
        n = self.cfg.accumulate
        for slot, (real, real_y) in enumerate(batches):
            z, fake_y, augmentation = self.draws(step, slot, augmented_images=2 * self.per_rank_batch)  # real and fake
            self.opt_d.zero_grad(set_to_none=True)
            parts = zip(
                micro_batches(real, n),
                self._split(real_y, n),
                micro_batches(z, n),
                self._split(fake_y, n),
                self._split_each(augmentation, n, halves=2),
            )
            d_outputs = []
            for part, inputs in enumerate(parts):
                with self._micro_batch(part, self.D_train):
                    outputs = self.d_losses(*inputs)
                    self.loss_scaling.scale("D", outputs[0] / n).backward()
                d_outputs.append([t.detach().clone() for t in outputs])  # CUDA graphs may reuse the outputs' memory
            loss_d, d_real, d_fake = (sum(values) / n for values in zip(*d_outputs))
            self.loss_scaling.step("D", self.opt_d, self.opt_d_step)

        z, fake_y, augmentation = self.draws(step, len(batches), augmented_images=self.per_rank_batch)
        pairs = 1
        if self.cfg.mode_seeking and fake_y is not None:
            fake_y = fake_y.chunk(2)[0].repeat(2)  # image i and i + B/2: one class, two latents
            pairs = 2  # each micro-batch keeps its pairs
        # D in train mode updates its spectral-norm vectors here too (BigGAN-PyTorch's); in eval mode not (the official code's).
        self.D.train(self.cfg.d_sn_in_g_step).requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        g_losses = []
        parts = zip(micro_batches(z, n, pairs), self._split(fake_y, n, pairs), self._split_each(augmentation, n, pairs))
        for part, inputs in enumerate(parts):
            with self._micro_batch(part, self.G_train):
                loss = self.g_loss(*inputs)
                self.loss_scaling.scale("G", loss / n).backward()
            g_losses.append(loss.detach().clone())
        loss_g = sum(g_losses) / n
        self.loss_scaling.step("G", self.opt_g, self.opt_g_step)
        self.D.train().requires_grad_(True)

        self.world.broadcast_buffers(self.G, self.D)  # SN vectors already agree; BN statistics may not
        self.ema_average(self.G, self.ema.weight(step + 1))
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "d_real": d_real, "d_fake": d_fake}

    def draws(
        self, step: int, slot: int, augmented_images: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """Latents, fake labels and DiffAugment parameters of one D/G slot: a pure function of
        (seed, step, slot, rank), so a resumed run needs no RNG state for them. The augmentation is
        drawn after the latents, so runs without it draw the same latents as before it existed."""
        gen = stream_generator(self.cfg.seed, step, slot, self.world.rank, LATENT_STREAM, device=self.draw_device)
        z = torch.randn(self.per_rank_batch, self.cfg.z_dim, generator=gen, device=self.draw_device)
        y = None
        if self.num_classes:
            y = torch.randint(self.num_classes, (self.per_rank_batch,), generator=gen, device=self.draw_device)
        augmentation = draw(self.diffaug, augmented_images, self.cfg.image_size, gen)
        device = self.world.device
        return z.to(device), None if y is None else y.to(device), {k: v.to(device) for k, v in augmentation.items()}

    @staticmethod
    def _split(t: torch.Tensor | None, n: int, halves: int = 1) -> list[torch.Tensor | None]:
        return [None] * n if t is None else micro_batches(t, n, halves)

    @staticmethod
    def _split_each(params: dict[str, torch.Tensor], n: int, halves: int) -> list[dict[str, torch.Tensor]]:
        """DiffAugment's per-image parameters, split as the images they go with."""
        split = {name: micro_batches(t, n, halves) for name, t in params.items()}
        return [{name: parts[k] for name, parts in split.items()} for k in range(n)]

    @contextlib.contextmanager
    def _micro_batch(self, part: int, trained: torch.nn.Module) -> Iterator[None]:
        """Micro-batch `part` of a step: after the first, the spectral norms use the vectors the first
        updated (one power iteration per step, as without accumulation); under DDP, gradients are
        reduced over the ranks once, after the last."""
        with contextlib.ExitStack() as stack:
            if part > 0:
                stack.enter_context(frozen_spectral_norm(self.G, self.D))
            if part < self.cfg.accumulate - 1 and isinstance(trained, DistributedDataParallel):
                stack.enter_context(trained.no_sync())
            yield

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is not None:
            return torch.autocast(self.world.device.type, dtype=self.autocast_dtype)
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
            fake = self.G_train(z, fake_y)
            loss = hinge_g_loss(self.D(augment(fake, augmentation), fake_y).float())
        if self.cfg.mode_seeking:
            loss = loss + self.cfg.mode_seeking * mode_seeking_penalty(fake, z)
        return loss
