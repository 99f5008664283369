"""G_ema, the exponential moving average of G's weights, with batch-norm statistics of its own.

G's running statistics belong to G's weights, not to the average: G_ema run in eval mode with them
draws from a mismatched network (at chance on the built-in photos, where G itself was recognisable).
So G_ema's statistics are recomputed from its own weights, as BigGAN-PyTorch's standing statistics
are: reset, then a cumulative average over STANDING_BATCHES train-mode forward passes of random
(z, y) at the training batch size, with the spectral-norm vectors left as they are.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from tritonsagan.models import Generator, TuningConfig, set_tuning
from tritonsagan.models.layers import model_power_iteration

from .seeding import noise_inputs_seeded, stream_generator

STANDING_BATCHES = 16  # BigGAN-PyTorch's num_standing_accumulations
STANDING_STREAM = 11  # the last counter of the standing passes' stream (tritonsagan.seeding)


@torch.no_grad()
def standing_statistics(
    generator: Generator, batch_size: int, draws: torch.Generator, batches: int = STANDING_BATCHES
) -> None:
    """Replace every batch-norm layer's running mean and variance of `generator` by their average over
    `batches` train-mode forward passes of `batch_size` random latents (and classes), drawn from `draws`."""
    if batch_size < 2 or batches < 1:
        raise ValueError(
            f"standing statistics need batches of at least 2 images and at least 1 batch, got {batches} x {batch_size}"
        )
    cfg, device = generator.config, next(generator.parameters()).device
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training, momenta = generator.training, [m.momentum for m in norms]
    generator.eval()  # the spectral-norm layers keep their vectors: only the batch norms run in train mode
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the passes
        norm.train()
    try:
        for _ in range(batches):
            z = torch.randn(batch_size, cfg.z_dim, generator=draws).to(device)
            y = torch.randint(cfg.num_classes, (batch_size,), generator=draws).to(device) if cfg.num_classes else None
            noise_seed = int(torch.randint(2**62, (), generator=draws)) if cfg.noise_inputs else 0
            with noise_inputs_seeded(generator, noise_seed):
                generator(z, y)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        generator.train(was_training)


class EMA:
    """G_ema = decay * G_ema + (1 - decay) * G after each step from `start` (a copy before it):
    `average(G, weight(step))`. The spectral-norm vectors of G_ema get one power iteration on its own
    weights per update; its batch-norm statistics come from `refresh_statistics`, which every reader
    of G_ema (sample grids, saved weights, FID) calls first."""

    def __init__(self, model: Generator, decay: float, start: int, batch_size: int, seed: int) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        # G_ema computes as the generator loaded from its saved weights does (the default tuning), so
        # that its sample grids are what tritonsagan-generate draws again from the run's seed.
        set_tuning(self.model, TuningConfig())
        self.decay, self.start = decay, start
        self.batch_size, self.seed = batch_size, seed
        self.statistics_step: int | None = None  # the step whose weights the statistics belong to

    def weight(self, step: int) -> float:
        """How much of G goes into G_ema at this step (1: a copy)."""
        return 1.0 - (self.decay if step >= self.start else 0.0)

    @torch.no_grad()
    def average(self, source: torch.nn.Module, weight: float) -> None:
        torch._foreach_lerp_(list(self.model.parameters()), list(source.parameters()), weight)
        model_power_iteration(self.model)

    def refresh_statistics(self, step: int) -> Generator:
        """G_ema with the standing statistics of its weights at `step` (recomputed once per step, drawn
        from (seed, step): a resumed run computes the same)."""
        if self.statistics_step != step:
            standing_statistics(self.model, self.batch_size, stream_generator(self.seed, step, STANDING_STREAM))
            self.statistics_step = step
        return self.model
