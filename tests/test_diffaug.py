"""DiffAugment: each op against a plain per-pixel reference, gradients into G, compile, and training with it."""

import pytest
import torch
from safetensors.torch import load_file
from tritonsagan.models import Discriminator, Generator

from tritonsagan.checkpoint import latest_checkpoint
from tritonsagan.diffaug import POLICIES, adjust_colour, augment, cutout, draw, parse_policy, translate
from tritonsagan.errors import ConfigError
from tritonsagan.seeding import stream_generator
from tritonsagan.step import LATENT_STREAM, TrainingStep
from tritonsagan.train import TrainConfig, train
from tritonsagan.train import main as train_main
from tritonsagan.train_config import resolve_diffaug


def _images(batch=3, channels=2, size=9):
    return torch.randn(batch, channels, size, size, dtype=torch.float64)


def test_translation_moves_content_by_the_offset_with_zero_fill():
    x = _images()
    offsets = torch.tensor([[2, -3], [0, 0], [-9, 4]])  # the last moves everything out of the rows
    out = translate(x, offsets)
    expected = torch.zeros_like(x)
    for b, (dy, dx) in enumerate(offsets.tolist()):
        for i in range(9):
            for j in range(9):
                if 0 <= i - dy < 9 and 0 <= j - dx < 9:
                    expected[b, :, i, j] = x[b, :, i - dy, j - dx]
    assert torch.equal(out, expected)
    assert torch.equal(out[1], x[1]) and not out[2].any()


def test_cutout_zeroes_exactly_the_drawn_square():
    x = _images(size=8) + 10  # no pixel is zero before
    centres = torch.tensor([[0, 0], [4, 5], [8, 8]])
    out = cutout(x, centres)
    side = 4
    for b, (cy, cx) in enumerate(centres.tolist()):
        inside = torch.zeros(8, 8, dtype=torch.bool)
        inside[max(0, cy - side // 2) : cy - side // 2 + side, max(0, cx - side // 2) : cx - side // 2 + side] = True
        assert torch.equal(out[b][:, inside], torch.zeros_like(out[b][:, inside]))
        assert torch.equal(out[b][:, ~inside], x[b][:, ~inside])


def test_colour_ops_follow_their_formulas():
    x = _images(channels=3)
    brightness, saturation, contrast = (
        torch.tensor([0.3, -0.5, 0.0]),
        torch.tensor([0.0, 1.0, 2.0]),
        torch.tensor([0.5, 1.5, 1.0]),
    )
    out = adjust_colour(x, brightness, saturation, contrast)
    for b in range(3):
        y = x[b] + brightness[b]
        y = (y - y.mean(0)) * saturation[b] + y.mean(0)
        y = (y - y.mean()) * contrast[b] + y.mean()
        assert torch.allclose(out[b], y, rtol=0, atol=1e-12)


def test_draws_follow_the_paper_ranges_and_the_generator():
    params = draw(POLICIES, 4096, 128, torch.Generator().manual_seed(0))
    assert -0.5 <= params["brightness"].min() and params["brightness"].max() < 0.5
    assert 0 <= params["saturation"].min() and params["saturation"].max() < 2
    assert 0.5 <= params["contrast"].min() and params["contrast"].max() < 1.5
    assert params["translation"].min() == -16 and params["translation"].max() == 16  # 1/8 of 128
    assert params["cutout"].min() == 0 and params["cutout"].max() == 128
    again = draw(POLICIES, 4096, 128, torch.Generator().manual_seed(0))
    assert all(torch.equal(params[k], again[k]) for k in params)


def test_empty_policy_is_the_identity():
    x = _images()
    params = draw(parse_policy(""), 3, 9, torch.Generator().manual_seed(0))
    assert params == {} and augment(x, params) is x


@pytest.mark.parametrize(
    "text, message",
    [
        ("colour", "unknown augmentation 'colour'; allowed: color, translation, cutout"),
        ("color,color", "names an augmentation twice"),
    ],
)
def test_bad_policy_names_the_allowed_ones(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_policy(text)
    assert parse_policy(" color , cutout") == ("color", "cutout")


def test_gradients_reach_the_generator_through_every_augmentation():
    torch.manual_seed(0)
    G, D = Generator(ch=8), Discriminator(ch=8)
    with torch.no_grad():
        G.attention.gamma.fill_(0.5)
    params = draw(POLICIES, 2, 128, torch.Generator().manual_seed(1))
    D(augment(G(torch.randn(2, 128)), params)).mean().backward()
    for name in ("linear.weight", "attention.gamma", "conv_out.weight"):
        grad = dict(G.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_compiles_without_graph_breaks_and_matches_eager():
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    params = draw(POLICIES, 4, 32, torch.Generator().manual_seed(2))
    compiled = torch.compile(augment, fullgraph=True)
    eager_out, compiled_out = augment(x, params), compiled(x, params)
    assert torch.allclose(compiled_out, eager_out, atol=1e-5)
    (g_eager,) = torch.autograd.grad(eager_out.square().sum(), x)
    (g_compiled,) = torch.autograd.grad(compiled_out.square().sum(), x)
    assert torch.allclose(g_compiled, g_eager, atol=1e-4)


def test_bf16_autocast():
    x = torch.randn(2, 3, 16, 16)
    params = draw(POLICIES, 2, 16, torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = augment(x.bfloat16(), params)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), augment(x, params), atol=0.1)


# ---- in training ---------------------------------------------------------------------------------

TINY = dict(ch=8, batch_size=4, workers=0, num_samples=4, log_every=2, sample_every=2, save_every=2, compile=False)


def test_default_policy_per_data_source(tmp_path):
    assert resolve_diffaug("auto", "builtin") == "color,translation,cutout"
    assert resolve_diffaug("auto", str(tmp_path)) == ""
    assert resolve_diffaug("cutout", "builtin") == "cutout"
    step = TrainingStep.fresh(TrainConfig(**TINY))
    assert step.cfg.diffaug == "color,translation,cutout" and step.diffaug == ("color", "translation", "cutout")


def test_augmentation_free_draws_are_the_latents_alone():
    """Without DiffAugment nothing extra is drawn or applied: the latents are the ones drawn before the feature."""
    plain = TrainingStep.fresh(TrainConfig(diffaug="", conditional=True, **TINY), num_classes=3)
    augmented = TrainingStep.fresh(TrainConfig(diffaug="color,cutout", conditional=True, **TINY), num_classes=3)
    (z, y, none), (z_aug, y_aug, params) = plain.draws(0, 0, 8), augmented.draws(0, 0, 8)
    assert (
        none == {}
        and set(params) == {"brightness", "saturation", "contrast", "cutout"}
        and params["cutout"].shape == (8, 2)
    )
    assert torch.equal(z, z_aug) and torch.equal(y, y_aug)
    gen = stream_generator(0, 0, 0, 0, LATENT_STREAM)
    assert torch.equal(z, torch.randn(4, 128, generator=gen))  # exactly the latents of a run without the feature


def test_resume_is_bitwise_exact_with_diffaugment(tmp_path):
    def run(out, steps):
        train(TrainConfig(out=str(out), steps=steps, diffaug="color,translation,cutout", **TINY))

    run(tmp_path / "straight", 4)
    run(tmp_path / "split", 2)
    run(tmp_path / "split", 4)
    straight, split = (load_file(latest_checkpoint(tmp_path / name / "checkpoints")) for name in ("straight", "split"))
    assert [k for k in straight if not torch.equal(straight[k], split[k])] == []


def test_bad_policy_flag_is_a_clear_error(tmp_path, capsys):
    assert train_main(["--out", str(tmp_path / "run"), "--diffaug", "color,flip"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("error: invalid config:")
        and "unknown augmentation 'flip'; allowed: color, translation, cutout" in err
    )
