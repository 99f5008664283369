"""G's reflect padding (GeneratorConfig.padding, not in SAGAN): every 3x3 conv of G pads by
reflection, so nothing in G tells the border from the middle; saved and loaded with the weights,
fixed for a run, named in model cards."""

import json

import pytest
import torch
from helpers import SMALL_GENERATOR, rel_err, tiny_config
from tritonsagan.models import Generator, GeneratorConfig

from tritonsagan.errors import ConfigError
from tritonsagan.model_card import card_table
from tritonsagan.shipped import shipped_weights
from tritonsagan.train import train


def _images_from_a_flat_start(padding: str) -> torch.Tensor:
    """G's images when its 4x4 start is the same at every place (each channel one value)."""
    torch.manual_seed(0)
    G = Generator(**SMALL_GENERATOR, padding=padding).double()
    with torch.no_grad():
        weight = G.linear.weight.view(-1, 16, G.config.z_dim)
        weight.copy_(weight[:, :1].expand_as(weight))
        bias = G.linear.bias.view(-1, 16)
        bias.copy_(bias[:, :1].expand_as(bias))
        G.attention.gamma.fill_(0.7)  # the attention block takes part
    return G(torch.randn(4, G.config.z_dim, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))


def test_with_reflect_padding_a_flat_start_draws_flat_images_and_with_zeros_it_does_not():
    for padding, flat in (("reflect", True), ("zeros", False)):
        images = _images_from_a_flat_start(padding)
        spread = rel_err(images, images[:, :, :1, :1].expand_as(images))
        # Every conv reflecting leaves no place unlike another; one zero-padded conv marks the border.
        assert (spread < 1e-12) == flat, (padding, spread)


def test_reflect_padding_pads_every_3x3_conv_and_compiles_without_graph_breaks():
    G = Generator(**SMALL_GENERATOR, padding="reflect")
    convs = [m for m in G.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 2 * len(G.blocks) + 1 and all(m.padding_mode == "reflect" for m in convs)
    compiled = torch.compile(G, fullgraph=True, backend="aot_eager")
    z, y = torch.randn(2, 128), torch.tensor([0, 2])
    assert compiled(z, y).shape == (2, 3, 32, 32)


def test_padding_is_saved_with_the_weights_and_older_configs_load_as_zeros(tmp_path):
    G = Generator(**SMALL_GENERATOR, padding="reflect")
    G.save_pretrained(tmp_path / "reflect")
    assert Generator.from_pretrained(tmp_path / "reflect").config.padding == "reflect"
    older = tmp_path / "older"  # weights saved before the padding field existed
    Generator(**SMALL_GENERATOR).save_pretrained(older)
    config = json.loads((older / "config.json").read_text())
    del config["padding"]
    (older / "config.json").write_text(json.dumps(config))
    assert Generator.from_pretrained(older).config.padding == "zeros"


def test_an_unknown_padding_is_named():
    with pytest.raises(ValueError, match="Generator: padding must be one of"):
        GeneratorConfig(padding="circular")


def test_resuming_with_other_padding_is_refused(tmp_path):
    train(tiny_config(tmp_path / "run", steps=2, image_size=32, attn_res=16))
    with pytest.raises(ConfigError, match=r"--padding 'zeros' \(this command: 'reflect'\)"):
        train(tiny_config(tmp_path / "run", steps=4, image_size=32, attn_res=16, padding="reflect"))


def test_a_model_card_names_reflect_padding():
    card = json.loads((shipped_weights("builtin-photos-64") / "card.json").read_text())
    card["generator"]["noise_inputs"] = False
    assert "reflect padding" not in card_table(card)
    card["generator"]["padding"] = "reflect"
    assert "17 classes, reflect padding; stored in float16" in card_table(card)
