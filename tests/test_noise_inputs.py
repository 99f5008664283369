"""G's noise inputs (GeneratorConfig.noise_inputs, not in SAGAN): they start as the plain generator,
add learned per-pixel noise, and are a pure function of their stream wherever G runs (a training
step, a resumed run, G_ema's standing statistics, generation), never disturbing torch's global RNG."""

import json
from pathlib import Path

import pytest
import torch
from helpers import SMALL_GENERATOR, final_weights, rel_err, tiny_config, tiny_step
from tritonsagan.models import Generator
from tritonsagan.models.config import NOISE_STRENGTH_GAIN
from tritonsagan.models.layers import NoiseInput

from tritonsagan.attention_figure import attention_maps
from tritonsagan.errors import ConfigError
from tritonsagan.generate import generate
from tritonsagan.model_card import card_table
from tritonsagan.shipped import shipped_weights
from tritonsagan.train import train


def _strengths(G: Generator) -> list[torch.Tensor]:
    """The learned parameters: each noise input's strength over NOISE_STRENGTH_GAIN."""
    return [m.scaled_strength for m in G.modules() if isinstance(m, NoiseInput)]


def _set_strengths(G: Generator, value: float) -> None:
    with torch.no_grad():
        for scaled_strength in _strengths(G):
            scaled_strength.fill_(value / NOISE_STRENGTH_GAIN)


def test_noise_input_adds_its_strength_times_one_map_per_image_in_float64():
    layer = NoiseInput(5).double()
    with torch.no_grad():
        layer.scaled_strength.copy_(torch.linspace(-1, 1, 5, dtype=torch.float64))
    x = torch.randn(3, 5, 7, 6, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(4)
    out = layer(x)
    torch.manual_seed(4)
    noise = torch.randn(3, 1, 7, 6, dtype=torch.float64)
    strength = NOISE_STRENGTH_GAIN * torch.linspace(-1, 1, 5, dtype=torch.float64)
    assert rel_err(out, x + strength.view(1, -1, 1, 1) * noise) < 1e-15
    grad = torch.randn_like(out)
    out.backward(grad)
    # the gain makes Adam's steps on the strength NOISE_STRENGTH_GAIN times larger
    assert rel_err(layer.scaled_strength.grad, NOISE_STRENGTH_GAIN * (grad * noise).sum((0, 2, 3))) < 1e-12
    assert rel_err(x.grad, grad) == 0


def test_the_readme_states_the_strengths_gain():
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    assert f"The strengths learn {NOISE_STRENGTH_GAIN:g} times faster than G's other weights" in readme


def test_noise_inputs_start_as_the_plain_generator():
    torch.manual_seed(0)
    plain = Generator(**SMALL_GENERATOR).double()
    torch.manual_seed(0)
    noisy = Generator(**SMALL_GENERATOR, noise_inputs=True).double()
    assert len(_strengths(noisy)) == 2 * len(noisy.blocks) and all(not s.any() for s in _strengths(noisy))
    state = noisy.state_dict()
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())  # the same weights, and more
    z, y = torch.randn(4, 128, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    assert rel_err(noisy(z, y), plain(z, y)) == 0  # zero strength: the noise adds nothing
    _set_strengths(noisy, 0.5)
    first, second = noisy(z, y), noisy(z, y)
    assert rel_err(first, second) > 1e-3  # fresh noise each pass
    first.square().mean().backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in _strengths(noisy))


def test_noise_inputs_compile_without_graph_breaks():
    G = Generator(**SMALL_GENERATOR, noise_inputs=True)
    compiled = torch.compile(G, fullgraph=True, backend="aot_eager")
    z, y = torch.randn(2, 128), torch.tensor([0, 2])
    assert compiled(z, y).shape == (2, 3, 32, 32)


def test_generation_with_noise_inputs_is_a_function_of_the_seed_and_leaves_the_global_rng():
    torch.manual_seed(1)
    G = Generator(**SMALL_GENERATOR, noise_inputs=True)
    _set_strengths(G, 2.0)
    torch.manual_seed(98)
    before = torch.get_rng_state()
    first = generate(G, 5, seed=3, batch_size=2)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(99)  # another global state: the same images
    assert torch.equal(generate(G, 5, seed=3, batch_size=2), first)
    assert not torch.equal(generate(G, 5, seed=4, batch_size=2), first)
    z, y = torch.randn(2, 128), torch.tensor([0, 1])
    before = torch.get_rng_state()
    figures = [attention_maps(G, z, y, [0, 5], noise_seed=seed)[0] for seed in (7, 7, 8)]
    assert torch.equal(figures[0], figures[1]) and not torch.equal(figures[0], figures[2])
    assert torch.equal(torch.get_rng_state(), before)


def test_a_step_draws_its_noise_from_its_stream_not_the_global_rng():
    losses = []
    for global_seed in (5, 6):
        step = tiny_step(num_classes=3, noise_inputs=True, image_size=32, attn_res=16)
        _set_strengths(step.G, 1.0)
        real = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
        y = torch.tensor([0, 1, 2, 0])
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        losses.append([{k: float(v) for k, v in step(n, [(real[n], y)]).items()} for n in range(2)])
        assert torch.equal(torch.get_rng_state(), state)
    assert losses[0] == losses[1]


def test_training_with_noise_inputs_learns_their_strengths_and_resumes_bitwise_exactly(tmp_path):
    flags = dict(conditional=True, noise_inputs=True, image_size=32, attn_res=16)
    train(tiny_config(tmp_path / "straight", steps=4, **flags))
    train(tiny_config(tmp_path / "split", steps=2, **flags))
    train(tiny_config(tmp_path / "split", steps=4, **flags))
    straight, split = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert [k for k in straight if not torch.equal(straight[k], split[k])] == []
    strengths = [k for k in straight if k.startswith("G.") and k.endswith(".scaled_strength")]
    assert len(strengths) == 2 * 3 and all(straight[k].abs().sum() > 0 for k in strengths)  # 4 -> 32: 3 blocks


def test_resuming_with_other_noise_inputs_is_refused(tmp_path):
    train(tiny_config(tmp_path / "run", steps=2, image_size=32, attn_res=16))
    with pytest.raises(ConfigError, match=r"--noise-inputs False \(this command: True\)"):
        train(tiny_config(tmp_path / "run", steps=4, image_size=32, attn_res=16, noise_inputs=True))


def test_a_model_card_names_noise_inputs():
    card = json.loads((shipped_weights("builtin-photos-64") / "card.json").read_text())
    card["generator"]["noise_inputs"] = False
    assert "noise inputs" not in card_table(card)
    card["generator"]["noise_inputs"] = True
    assert "17 classes, noise inputs; stored in float16" in card_table(card)
