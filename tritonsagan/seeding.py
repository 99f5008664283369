"""Seeds of the per-sample and per-step random streams: a seed and counters to a generator.

Every stream a run draws from (a sample's crop and flip, an epoch's order, a packed sample's flip,
a step's latents and DiffAugment parameters, G_ema's standing statistics) is a pure function of
(seed, counters...), its last counter naming the stream, so no two streams share numbers and a
resumed run needs no random state for them. numpy's SeedSequence mixes the words.
"""

from __future__ import annotations

import numpy as np
import torch


def stream_rng(seed: int, *counters: int) -> np.random.Generator:
    """The numpy generator of (seed, counters...)."""
    return np.random.default_rng(np.random.SeedSequence([seed, *counters]))


def stream_generator(seed: int, *counters: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The torch generator of (seed, counters...), on `device`: seeded from the same SeedSequence."""
    state = np.random.SeedSequence([seed, *counters]).generate_state(1)[0]
    return torch.Generator(device).manual_seed(int(state))
