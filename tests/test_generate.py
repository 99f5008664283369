"""tritonsagan-generate and its API: round trips, determinism, classes, errors, attention maps."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import rel_err
from PIL import Image
from tritonsagan.models import Generator

from tritonsagan import generate, load_generator
from tritonsagan.attention_figure import (
    HEAT_OPACITY,
    MIN_SCALE_TOP,
    UNIFORM,
    attention_figure,
    attention_maps,
    overlay,
    upsample_heat,
)
from tritonsagan.generate import main, sample_latents
from tritonsagan.images import PANEL_GAP, TITLE_HEIGHT
from tritonsagan.train import TrainConfig, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny conditional model trained for a few steps on the built-in photos."""
    out = tmp_path_factory.mktemp("gen") / "run"
    cfg = TrainConfig(
        out=str(out), ch=8, batch_size=4, steps=2, conditional=True, workers=0, num_samples=4, compile=False
    )
    train(cfg)
    return out


@pytest.fixture
def conditional_weights(tmp_path):
    torch.manual_seed(0)
    G = Generator(ch=8, num_classes=5)
    with torch.no_grad():  # distinct per-class BN tables and a live attention block
        for module in G.modules():
            if hasattr(module, "gamma") and isinstance(module.gamma, torch.nn.Embedding):
                module.gamma.weight.normal_(1.0, 0.5)
        G.attention.gamma.fill_(1.0)
    G.save_pretrained(tmp_path / "g")
    return tmp_path / "g"


def test_round_trip_from_every_kind_of_path(run_dir):
    from_export = load_generator(run_dir / "generator")
    from_file = load_generator(run_dir / "generator" / "model.safetensors")
    from_run = load_generator(run_dir)
    for G in (from_file, from_run):
        for (name, a), b in zip(from_export.state_dict().items(), G.state_dict().values()):
            assert torch.equal(a, b), name
    import shutil

    shutil.rmtree(run_dir / "generator")  # a run directory without its export: newest checkpoint's G_ema
    from_checkpoint = load_generator(run_dir)
    for (name, a), b in zip(from_export.state_dict().items(), from_checkpoint.state_dict().values()):
        assert torch.equal(a, b), name
    images = generate(from_checkpoint, 3, classes=[1], seed=4)
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 128, 128)


def test_generate_with_the_run_seed_redraws_the_last_ema_grid(tmp_path):
    run = tmp_path / "run"
    train(
        TrainConfig(
            out=str(run),
            ch=8,
            batch_size=4,
            steps=2,
            workers=0,
            num_samples=4,
            sample_every=2,
            save_every=2,
            compile=False,
        )
    )
    out = tmp_path / "again.png"
    assert (
        main(["--weights", str(run), "--n", "4", "--seed", "0", "--out", str(out)]) == 0
    )  # 4 columns; the run's grid is 2 x 2

    def tiles(path, columns):
        grid = np.asarray(Image.open(path))
        return [grid[2 + 130 * (i // columns) :][:128, 2 + 130 * (i % columns) :][:, :128] for i in range(4)]

    for ours, runs in zip(tiles(out, 4), tiles(run / "samples" / "step_0000002_ema.png", 2)):
        assert np.array_equal(ours, runs)


def test_same_seed_same_images_different_classes_different_images(conditional_weights):
    G = load_generator(conditional_weights)
    a = generate(G, 6, classes=[2], seed=11, batch_size=4)
    b = generate(G, 6, classes=[2], seed=11, batch_size=6)
    # Batching does not change the result beyond float rounding: BLAS blocks a matmul by its size,
    # so a pixel may land one grey level apart.
    off_by = (a.int() - b.int()).abs()
    assert off_by.max() <= 1 and (off_by > 0).float().mean() < 0.01
    assert not torch.equal(a, generate(G, 6, classes=[3], seed=11))
    assert not torch.equal(a, generate(G, 6, classes=[2], seed=12))


def test_truncation_bounds_the_latents():
    z = sample_latents(500, 16, seed=0, truncation=0.5)
    assert z.abs().max() <= 0.5 and z.std() > 0.2
    assert torch.equal(z, sample_latents(500, 16, seed=0, truncation=0.5))


@pytest.mark.parametrize("truncation", [1e-9, 1e-3, 2.0, 8.0])
def test_truncation_of_any_size_draws_the_truncated_normal(truncation):
    """Exactly: the moments of N(0, 1) truncated to [-t, t], for a t so small that redrawing until
    inside would never end (it hung before) as for one so large that it truncates nothing."""
    z = sample_latents(2000, 64, seed=1, truncation=truncation).double()
    s = torch.linspace(-1, 1, 100_001, dtype=torch.float64)  # x = t s: no cancellation for a tiny t
    density = torch.exp(-((truncation * s) ** 2) / 2)
    variance = (
        truncation**2 * torch.trapezoid(s**2 * density, s) / torch.trapezoid(density, s)
    )  # of the truncated normal
    assert z.abs().max() <= truncation and abs(z.mean()) < 0.01 * math.sqrt(variance)
    assert abs(z.var() / variance - 1) < 0.02


@pytest.mark.parametrize("value", ["nan", "0", "-1", "x"])
def test_truncation_that_cannot_be_met_is_refused_by_name(value, capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["--weights", str(tmp_path), "--truncation", value, "--out", str(tmp_path / "g.png")])
    assert f"argument --truncation: expected a positive number, got '{value}'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="truncation must be a positive number"):
        sample_latents(2, 4, seed=0, truncation=float(value) if value != "x" else math.nan)


def test_the_output_format_follows_the_extension(conditional_weights, tmp_path, capsys):
    signatures = {"g.jpg": b"\xff\xd8\xff", "g.JPEG": b"\xff\xd8\xff", "g.png": b"\x89PNG", "g.webp": b"RIFF"}
    for name, signature in signatures.items():
        assert main(["--weights", str(conditional_weights), "--n", "2", "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).read_bytes().startswith(signature), name
    assert main(["--weights", str(tmp_path / "not-read"), "--n", "2", "--out", str(tmp_path / "g.gif")]) == 1
    err = capsys.readouterr().err
    assert (
        "g.gif: cannot tell the image format from .gif; name it .png, .jpg, .jpeg, .webp" in err
    )  # before the weights are looked for


def test_command_writes_grids_and_files(conditional_weights, tmp_path):
    grid = tmp_path / "grid.png"
    assert main(["--weights", str(conditional_weights), "--n", "6", "--classes", "1,4", "--out", str(grid)]) == 0
    assert Image.open(grid).size == (6 * 130 + 2, 130 + 2)
    again = tmp_path / "again.png"
    main(["--weights", str(conditional_weights), "--n", "6", "--classes", "1,4", "--out", str(again)])
    assert np.array_equal(np.asarray(Image.open(grid)), np.asarray(Image.open(again)))

    assert (
        main(
            ["--weights", str(conditional_weights), "--n", "16", "--class-per-row", "--out", str(tmp_path / "rows.png")]
        )
        == 0
    )
    assert (
        main(["--weights", str(conditional_weights), "--n", "5", "--interpolate", "--out", str(tmp_path / "walk.png")])
        == 0
    )
    out_dir = tmp_path / "many"
    assert (
        main(["--weights", str(conditional_weights), "--n", "5", "--batch-size", "2", "--out-dir", str(out_dir)]) == 0
    )
    files = sorted(out_dir.glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    assert Image.open(files[0]).size == (128, 128)

    result = subprocess.run(  # the installed console script
        [
            str(Path(sys.executable).parent / "tritonsagan-generate"),
            "--weights",
            str(conditional_weights),
            "--n",
            "2",
            "--out",
            str(tmp_path / "cli.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (lambda p: None, ["--weights", "{missing}"], "weights not found"),
        (
            lambda p: (p / "model.safetensors").write_bytes(b"\x80\x04 a pickle"),
            ["--weights", "{dir}"],
            "not a safetensors file",
        ),
        (
            lambda p: (
                Generator(ch=8).save_pretrained(p)
                and (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:5000])
            ),
            ["--weights", "{dir}"],
            "truncated",
        ),
        (
            lambda p: (
                Generator(ch=8).save_pretrained(p)
                and (p / "config.json").write_text('{"model_type": "Generator", "ch": 16}')
            ),
            ["--weights", "{dir}"],
            "shape mismatch",
        ),
        (
            lambda p: Generator(ch=8, num_classes=3).save_pretrained(p),
            ["--weights", "{dir}", "--classes", "1,3"],
            "class index out of range: [3]",
        ),
        (lambda p: Generator(ch=8).save_pretrained(p), ["--weights", "{dir}", "--classes", "1"], "unconditional"),
    ],
)
def test_user_errors_exit_cleanly(tmp_path, capsys, setup, args, message):
    weights = tmp_path / "w"
    weights.mkdir()
    setup(weights)
    argv = [a.format(dir=weights, missing=tmp_path / "nope") for a in args] + [
        "--n",
        "2",
        "--out",
        str(tmp_path / "x.png"),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_attention_rows_equal_float64_softmax(conditional_weights):
    G = load_generator(conditional_weights)
    z, y = sample_latents(2, 128, seed=3), torch.tensor([0, 4])
    queries = [0, 17, 555, 1023]
    images, maps = attention_maps(G, z, y, queries)
    assert images.shape == (2, 3, 128, 128) and maps.shape == (2, 4, 16, 16)

    captured = {}
    G.attention.register_forward_hook(lambda m, inputs, out: captured.update(x=inputs[0]))
    with torch.no_grad():
        G(z, y)
        x = captured["x"]
        theta = G.attention.theta(x).flatten(2).double()  # (B, C/8, N)
        phi = torch.nn.functional.max_pool2d(G.attention.phi(x), 2).flatten(2).double()
    full = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # the whole N x N/4 matrix, float64
    assert rel_err(maps.flatten(2), full[:, queries]) < 1e-5


def test_attention_map_figure_as_the_paper_draws_it(conditional_weights, tmp_path):
    out = tmp_path / "maps.png"
    assert (
        main(
            [
                "--weights",
                str(conditional_weights),
                "--n",
                "2",
                "--attention-maps",
                "--queries",
                "10,10",
                "100,60",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    width, height = Image.open(out).size
    assert width > 3 * 128 and height > 2 * 128  # 2 rows of the image and 2 query panels, and a colour bar

    G = load_generator(conditional_weights)
    images, maps = attention_maps(G, sample_latents(2, 128, seed=0), torch.tensor([0, 4]), [2 * 32 + 2, 15 * 32 + 25])
    figure = attention_figure(images, maps, [(10, 10), (100, 60)], ["class 0", "class 4"])
    *panels, colour_bar = figure.axes
    assert [ax.get_title() for ax in panels[:3]] == ["queries", "query 1 at (10, 10)", "query 2 at (100, 60)"]
    assert [panels[0].get_ylabel(), panels[3].get_ylabel()] == ["class 0", "class 4"]
    for row in (0, 3):  # every query numbered on the image, and each panel labelled with its own
        assert [t.get_text() for t in panels[row].texts] == ["1", "2"]
        assert [t.get_text() for t in panels[row + 1].texts] == ["1"] and [
            t.get_text() for t in panels[row + 2].texts
        ] == ["2"]
    assert colour_bar.get_ylabel() == "attention weight / uniform"
    assert colour_bar.get_ylim() == pytest.approx((UNIFORM, max(upsample_heat(maps, 128).max(), MIN_SCALE_TOP)))


def test_attention_heat_is_smooth_and_the_image_shows_under_it():
    one_key = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    one_key[0, 0, 5, 9] = 1.0  # all attention on one key of the 16x16 grid
    heat = upsample_heat(one_key, 128)[0, 0]
    # In units of uniform attention (x 256 keys); bilinear, the nearest pixel centre lies 1/16 of a key from the key's.
    assert heat.max() == pytest.approx(256 * (15 / 16) ** 2)
    steps = max(np.abs(np.diff(heat, axis=0)).max(), np.abs(np.diff(heat, axis=1)).max())
    assert steps < 0.2 * heat.max()  # nearest-neighbour blocks would jump by the whole peak at their edges

    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    blended = overlay(image, heat, top=heat.max())
    grey = (image / 255) @ np.array([0.299, 0.587, 0.114])
    cold = heat <= UNIFORM
    assert cold.mean() > 0.9 and np.allclose(
        blended[cold], grey[cold][:, None]
    )  # no more than uniform: the image itself, in grey
    hottest = np.unravel_index(heat.argmax(), heat.shape)
    assert np.abs(blended[hottest] - grey[hottest]).max() > 0.3 * HEAT_OPACITY  # the heat is drawn over it


def test_several_weights_side_by_side_from_the_same_latents(conditional_weights, tmp_path, capsys):
    other = tmp_path / "other"
    torch.manual_seed(1)
    Generator(ch=8, num_classes=5).save_pretrained(other)
    single, both = tmp_path / "single.png", tmp_path / "both.png"
    assert main(["--weights", str(conditional_weights), "--n", "10", "--class-per-row", "--out", str(single)]) == 0
    assert (
        main(["--weights", str(conditional_weights), str(other), "--n", "10", "--class-per-row", "--out", str(both)])
        == 0
    )
    grid, pair = np.asarray(Image.open(single)), np.asarray(Image.open(both))
    assert pair.shape == (TITLE_HEIGHT + grid.shape[0], 2 * grid.shape[1] + PANEL_GAP, 3)
    assert np.array_equal(pair[TITLE_HEIGHT:, : grid.shape[1]], grid)  # the first weights' grid, unchanged
    assert pair[:TITLE_HEIGHT].max() > 200  # titled, white on black
    assert not np.array_equal(pair[TITLE_HEIGHT:, grid.shape[1] + PANEL_GAP :], grid)
    Generator(ch=8, num_classes=5, image_size=64).save_pretrained(
        tmp_path / "small"
    )  # another size: its grid beside, tops aligned
    assert (
        main(
            [
                "--weights",
                str(conditional_weights),
                str(tmp_path / "small"),
                "--n",
                "10",
                "--class-per-row",
                "--out",
                str(both),
            ]
        )
        == 0
    )
    small = np.asarray(Image.open(both))
    assert small.shape == (TITLE_HEIGHT + grid.shape[0], grid.shape[1] + PANEL_GAP + 8 * 66 + 2, 3)
    assert (
        np.array_equal(small[TITLE_HEIGHT:, : grid.shape[1]], grid)
        and small[TITLE_HEIGHT + 2 * 66 + 2 :, grid.shape[1] + PANEL_GAP :].max() == 0
    )
    Generator(ch=8, num_classes=3).save_pretrained(tmp_path / "three")
    assert main(["--weights", str(conditional_weights), str(tmp_path / "three"), "--n", "2", "--out", str(both)]) == 1
    assert "must share z_dim and classes" in capsys.readouterr().err
    assert main(["--weights", str(conditional_weights), str(other), "--n", "2", "--out-dir", str(tmp_path / "d")]) == 1
    assert "--out-dir and --attention-maps take one" in capsys.readouterr().err
