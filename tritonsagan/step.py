"""The training step: n_dis discriminator updates, one generator update and the EMA of G, with the
hinge losses (and, when asked, MSGAN's mode-seeking term), the latent and DiffAugment draws and the compile wrapping.

It is built from the models, their optimisers and a resolved TrainConfig (train_config.resolve_config);
it knows nothing of run directories, checkpoints or datasets: `step(n, batches)` takes the real batches
and returns the losses. tritonsagan.train's loop feeds it; benchmarks and tests call it directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from tritonsagan.models import Discriminator, Generator, set_tuning

from .diffaug import augment, draw, parse_policy
from .distributed import Distributed
from .ema import EMA
from .errors import ConfigError
from .seeding import stream_generator
from .train_config import TrainConfig, model_configs, resolve_config

RealBatch = tuple[torch.Tensor, torch.Tensor | None]  # images in [-1, 1] and their labels (None: unconditional)

LATENT_STREAM = 3  # the last counter of a step's latent and DiffAugment stream (tritonsagan.seeding)
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


@dataclass
class TrainingModels:
    """What a step trains: G, D, G's moving average and the two Adam optimisers."""

    G: Generator
    D: Discriminator
    ema: EMA
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam

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
        return cls(G, D, ema, opt_g, opt_d)


class TrainingStep:
    """`step(n, batches)`: step n of a run (0 for the first), on one real batch per D update. Under
    torchrun, G and D train wrapped in DistributedDataParallel and rank 0's buffers are broadcast
    after every step."""

    def __init__(self, cfg: TrainConfig, models: TrainingModels, world: Distributed) -> None:
        if cfg.compile is None or cfg.bf16 is None or cfg.diffaug == "auto":
            raise ConfigError("TrainingStep takes a resolved config: pass it through train_config.resolve_config")
        self.cfg, self.world = cfg, world
        G, D, ema, opt_g, opt_d = models.G, models.D, models.ema, models.opt_g, models.opt_d
        self.G, self.D, self.ema, self.opt_g, self.opt_d = G, D, ema, opt_g, opt_d
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
        loss and mean logits and the G loss, on the device."""
        if self.cfg.compile and self.cfg.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are done with: CUDA graphs may reuse their memory
        for slot, (real, real_y) in enumerate(batches):
            z, fake_y, augmentation = self.draws(step, slot, augmented_images=2 * self.per_rank_batch)  # real and fake
            self.opt_d.zero_grad(set_to_none=True)
            loss_d, d_real, d_fake = self.d_losses(real, real_y, z, fake_y, augmentation)
            loss_d.backward()
            self.opt_d_step()

        z, fake_y, augmentation = self.draws(step, len(batches), augmented_images=self.per_rank_batch)
        if self.cfg.mode_seeking and fake_y is not None:
            fake_y = fake_y.chunk(2)[0].repeat(2)  # image i and i + B/2: one class, two latents
        # D in train mode updates its spectral-norm vectors here too (BigGAN-PyTorch's); in eval mode not (the official code's).
        self.D.train(self.cfg.d_sn_in_g_step).requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g = self.g_loss(z, fake_y, augmentation)
        loss_g.backward()
        self.opt_g_step()
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

    def _autocast(self) -> contextlib.AbstractContextManager:
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
            fake = self.G_train(z, fake_y)
            loss = hinge_g_loss(self.D(augment(fake, augmentation), fake_y).float())
        if self.cfg.mode_seeking:
            loss = loss + self.cfg.mode_seeking * mode_seeking_penalty(fake, z)
        return loss
