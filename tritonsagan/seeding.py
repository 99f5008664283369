"""Seeds of the per-sample and per-step random streams: a seed and counters to a generator.

Every stream a run draws from (a sample's crop and flip, an epoch's order, a packed sample's flip,
a step's latents and DiffAugment parameters, G_ema's standing statistics, G's noise inputs) is a
pure function of (seed, counters...), its last counter naming the stream, so no two streams share
numbers and a resumed run needs no random state for them. numpy's SeedSequence mixes the words.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def stream_rng(seed: int, *counters: int) -> np.random.Generator:
    """The numpy generator of (seed, counters...)."""
    return np.random.default_rng(np.random.SeedSequence([seed, *counters]))


def stream_seed(seed: int, *counters: int) -> int:
    """The integer seed of (seed, counters...), from the same SeedSequence as stream_rng's."""
    return int(np.random.SeedSequence([seed, *counters]).generate_state(1)[0])


def stream_generator(seed: int, *counters: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The torch generator of (seed, counters...), on `device`: seeded from the same SeedSequence."""
    return torch.Generator(device).manual_seed(stream_seed(seed, *counters))


def noise_inputs_seeded(generator: torch.nn.Module, seed: int) -> contextlib.AbstractContextManager:
    """Around a generator's forward passes: with noise inputs (GeneratorConfig.noise_inputs), which
    draw from torch's global RNG, that RNG seeded with `seed` inside and as it was after, so that the
    noise too is a pure function of its stream (torch.compile's RNG reads the same global state);
    without them, nothing."""
    if not generator.config.noise_inputs:
        return contextlib.nullcontext()
    device = next(generator.parameters()).device
    return _seeded_global_rng(seed, device)


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device):
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
