"""G_ema's batch-norm statistics are its own: recomputed from its weights (standing statistics), and
what every output of a run (sample grids, generator/, checkpoints) carries."""

import copy

import pytest
import torch
from helpers import final_weights, tiny_config
from tritonsagan.models import Generator

from tritonsagan.ema import standing_statistics
from tritonsagan.run_directory import EMA_GENERATOR
from tritonsagan.train import train

NORM_BUFFERS = ("running_mean", "running_var")


@pytest.fixture(scope="module")
def early_ema_run(tmp_path_factory):
    """A short conditional run whose EMA starts at step 1: G_ema's weights then differ from G's."""
    run = tmp_path_factory.mktemp("ema") / "run"
    train(
        tiny_config(
            run,
            steps=8,
            save_every=8,
            sample_every=8,
            conditional=True,
            ema_start=1,
            ema_decay=0.7,
            batch_size=8,
            diffaug="",
        )
    )
    return run


def _images(G: Generator) -> torch.Tensor:
    z = torch.randn(16, G.config.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return G.eval()(z, torch.arange(16) % G.config.num_classes)


def _norm_buffers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state.items() if name.endswith(NORM_BUFFERS)}


def test_ema_images_match_a_fresh_standing_pass(early_ema_run):
    """G_ema's eval-mode images (as saved) lie as close to those after a fresh standing-statistics pass
    as two such passes lie to each other; with G's running statistics (what G_ema used to carry) they do not."""
    G_ema = Generator.from_pretrained(early_ema_run / "generator")
    saved = _images(G_ema)
    passes = []
    for seed in range(1, 5):
        fresh = copy.deepcopy(G_ema)
        standing_statistics(fresh, batch_size=8, draws=torch.Generator().manual_seed(seed))
        passes.append(_images(fresh))
    spread = max((a - b).abs().mean() for i, a in enumerate(passes) for b in passes[i + 1 :])
    assert max((saved - p).abs().mean() for p in passes) < 1.5 * spread

    with_g_statistics = copy.deepcopy(G_ema)
    weights = final_weights(early_ema_run)
    with_g_statistics.load_state_dict(
        {**G_ema.state_dict(), **{k[2:]: v for k, v in _norm_buffers(weights).items() if k.startswith("G.")}}
    )
    assert min((_images(with_g_statistics) - p).abs().mean() for p in passes) > 3 * spread


def test_every_output_carries_the_standing_statistics(early_ema_run):
    """The checkpoint's G_ema and generator/ hold the same statistics, and they are not G's."""
    checkpoint = {
        k[len(EMA_GENERATOR) + 1 :]: v
        for k, v in final_weights(early_ema_run).items()
        if k.startswith(EMA_GENERATOR + ".")
    }
    exported = Generator.from_pretrained(early_ema_run / "generator").state_dict()
    g_statistics = {k[2:]: v for k, v in _norm_buffers(final_weights(early_ema_run)).items() if k.startswith("G.")}
    assert _norm_buffers(checkpoint).keys() == _norm_buffers(exported).keys() == g_statistics.keys() and g_statistics
    assert all(torch.equal(checkpoint[k], exported[k]) for k in g_statistics)
    assert not any(torch.equal(checkpoint[k], g_statistics[k]) for k in g_statistics if k.endswith("running_var"))


def test_standing_statistics_leave_weights_and_spectral_norm_vectors_alone():
    G = Generator(ch=8, num_classes=3)
    before = copy.deepcopy(G.state_dict())
    standing_statistics(G, batch_size=4, draws=torch.Generator().manual_seed(0), batches=2)
    after = G.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.endswith((*NORM_BUFFERS, "num_batches_tracked")) for name in changed)
    assert G.training  # back in the mode it was in
    with pytest.raises(ValueError, match="at least 2 images"):
        standing_statistics(G, batch_size=1, draws=torch.Generator())
