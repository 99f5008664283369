"""tritonsagan-export: a run's G_ema as a folder to share or ship, its model card written from the
run's own record and from figures measured on the exported weights."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import image_folder, stand_in_network, tiny_config
from PIL import Image

from tritonsagan.checkpoint import list_checkpoints
from tritonsagan.cli import device_name
from tritonsagan.curves import read_metrics
from tritonsagan.export import Measurer, _as_shipped, main, training_segments
from tritonsagan.fixed_pattern import fixed_pattern
from tritonsagan.generate import generate
from tritonsagan.model_card import model_card
from tritonsagan.photo_match import generator_photo_match
from tritonsagan.photo_variety import generator_photo_variety
from tritonsagan.run_directory import RunDirectory, generator_from_checkpoint, load_generator
from tritonsagan.shipped import SHIPPED_FILES
from tritonsagan.train import train
from tritonsagan.weights_io import load_safetensors

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
    ),  # the stand-in feature network
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def builtin_run(tmp_path_factory):
    """A tiny class-conditional run on the built-in photos at 32x32 with the mode-seeking term, trained in
    two processes (0 -> 4, 4 -> 6), the second with lower learning rates and DiffAugment."""
    run = tmp_path_factory.mktemp("export") / "run"
    settings = dict(conditional=True, image_size=32, attn_res=16, mode_seeking=1.0, log_every=1)
    train(tiny_config(run, steps=4, diffaug="", **settings))
    train(tiny_config(run, steps=6, lr_g=5e-5, lr_d=2e-4, diffaug="translation", **settings))
    return run


def test_export_writes_the_folder_with_figures_measured_on_the_float16_weights(builtin_run, tmp_path, monkeypatch):
    network = stand_in_network(tmp_path / "standin.pt")
    out, curve = tmp_path / "tiny-photos", tmp_path / "curve.png"
    flags = ["--kid-n", "40", "--fid-weights", str(network), "--device", "cpu", "--curve", str(curve)]
    measured = []
    measure = Measurer.__call__
    monkeypatch.setattr(Measurer, "__call__", lambda self, G: measured.append(G) or measure(self, G))
    assert main([str(builtin_run), "--out", str(out), *flags]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(SHIPPED_FILES)
    tensors, _ = load_safetensors(out / "model.safetensors")
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float16}
    card = json.loads((out / "card.json").read_text())
    assert (
        card["name"] == "tiny-photos"
        and card["step"] == 6
        and card["batch_size"] == 4
        and card["generator"]["image_size"] == 32
    )
    G = load_generator(out)  # measured as shipped: the same images as the card's figures
    assert card["photo_match"] == generator_photo_match(G) and card["photo_variety"] == generator_photo_variety(G)
    assert card["fixed_pattern"]["n"] == 40 and card["fixed_pattern"]["generated"] == fixed_pattern(
        generate(G, 40, classes=list(range(17)), seed=0)
    )
    kid = card["kid"]
    assert (
        kid["n"] == 40
        and kid["network"] == "unknown TorchScript network standin.pt"
        and kid["kid"] > kid["real_vs_real"]
    )
    # the learning curve: G_ema of every checkpoint kept (steps 2, 4, 6), the last the exported weights,
    # measured once; the others rounded to float16 as the export stores them
    assert [point["step"] for point in card["curve"]] == [2, 4, 6] and Image.open(curve).format == "PNG"
    figures = ("photo_match", "photo_variety", "kid", "fixed_pattern")
    assert {key: card["curve"][-1][key] for key in figures} == {key: card[key] for key in figures}
    assert len(measured) == 3
    exported = _as_shipped(generator_from_checkpoint(list_checkpoints(RunDirectory(builtin_run).checkpoints)[-1][1]))
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), G.state_dict().values(), strict=True))
    assert (
        card["curve"][0]["kid"]["kid"] != kid["kid"] and card["curve"][0]["kid"]["real_vs_real"] == kid["real_vs_real"]
    )
    # the run's record: one segment per process, their seconds from the last logged images/s
    by_step = {r["step"]: r for r in read_metrics(builtin_run)}
    assert [(s["from"], s["to"]) for s in card["segments"]] == [(0, 4), (4, 6)]
    assert card["segments"][1]["seconds"] == pytest.approx(2 * 4 / by_step[6]["images_per_s"])
    assert card["training_seconds"] == pytest.approx(
        4 * 4 / by_step[4]["images_per_s"] + 2 * 4 / by_step[6]["images_per_s"]
    )
    # what the resume changed of the recipe (its --steps too, which is no training setting)
    assert card["config"]["lr_g"] == 5e-5 and card["recipe_changes"] == [
        {"step": 4, "changed": {"lr_g": [1e-4, 5e-5], "lr_d": [4e-4, 2e-4], "diffaug": ["", "translation"]}}
    ]
    readme = (out / "README.md").read_text()
    assert readme == model_card(card) and readme.startswith("# tiny-photos\n")
    for said in (
        f"| device | {device_name(torch.device('cpu'))} |",
        "6 steps at batch 4 (24 images)",
        "lr G 0.0001, lr D 0.0004, EMA decay 0.9999 from step 20,000, mode-seeking term weight 1; compile off, "
        "precision fp32, DiffAugment off; from step 4: lr G 5e-05, lr D 0.0002, DiffAugment translation |",
        "in 2 process(es)",
        f"{card['photo_match']['accuracy']:.0%} of 136 generated images",
        f"KID | {kid['kid']:.4f}: 40 generated",
        f"photo variety | {card['photo_variety']['variety']:.2f}: how far each class's 32 generated images",
        f"score {kid['real_vs_real']:.4f}",
        f"fixed pattern | {card['fixed_pattern']['generated']:.2f} for 40 generated",
    ):
        assert said in readme, said


def test_export_of_an_earlier_checkpoint_counts_the_training_up_to_it(builtin_run, tmp_path):
    (step, checkpoint), *_ = list_checkpoints(RunDirectory(builtin_run).checkpoints)
    out = tmp_path / "early"
    assert (
        main(
            [
                str(builtin_run),
                "--out",
                str(out),
                "--checkpoint",
                str(checkpoint),
                "--kid-n",
                "0",
                "--name",
                "photos-early",
            ]
        )
        == 0
    )
    card = json.loads((out / "card.json").read_text())
    # the settings it trained with: the first process's, not those the run changed to after step 4
    assert card["config"]["lr_g"] == 1e-4 and card["recipe_changes"] == []
    assert (
        step == 2
        and card["step"] == 2
        and card["name"] == "photos-early"
        and [(s["from"], s["to"]) for s in card["segments"]] == [(0, 2)]
    )
    assert (
        card["kid"] == {"not_measured": "--kid-n 0"}
        and "| KID | not measured: --kid-n 0 |" in (out / "README.md").read_text()
    )
    assert card["curve"] is None


def test_curve_every_measures_the_checkpoints_at_its_multiples_and_the_exported_one(builtin_run, tmp_path):
    out, curve = tmp_path / "sparse", tmp_path / "sparse.png"
    flags = ["--kid-n", "0", "--curve", str(curve), "--curve-every", "4"]
    assert main([str(builtin_run), "--out", str(out), *flags]) == 0
    card = json.loads((out / "card.json").read_text())
    assert [point["step"] for point in card["curve"]] == [4, 6]  # kept: 2, 4, 6


def _has_orange(png: Path) -> bool:
    """Whether matplotlib's second line colour (C1, #ff7f0e) is drawn: a second curve in a panel."""
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    return bool((np.abs(pixels - [255, 127, 14]).max(1) < 20).any())


def test_beside_draws_another_exports_curve_in_the_same_panels(builtin_run, tmp_path, capsys):
    export = ["--kid-n", "0", "--device", "cpu"]
    assert main([str(builtin_run), "--out", str(tmp_path / "before"), "--curve", str(tmp_path / "a.png"), *export]) == 0
    alone, together = tmp_path / "a.png", tmp_path / "b.png"
    before = tmp_path / "before" / "card.json"
    assert (
        main(
            [
                str(builtin_run),
                "--out",
                str(tmp_path / "after"),
                "--curve",
                str(together),
                "--beside",
                str(before),
                *export,
            ]
        )
        == 0
    )
    assert not _has_orange(alone) and _has_orange(together)
    # a card exported without --curve has none to draw: said before anything is measured
    assert main([str(builtin_run), "--out", str(tmp_path / "bare"), *export]) == 0
    bare = tmp_path / "bare" / "card.json"
    assert (
        main(
            [str(builtin_run), "--out", str(tmp_path / "c"), "--curve", str(tmp_path / "c.png"), "--beside", str(bare)]
        )
        == 1
    )
    assert f"--beside {bare}: its card has no learning curve" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_small_folder_gives_two_disjoint_real_sets(tmp_path):
    run = tmp_path / "run"
    train(
        tiny_config(run, data=str(image_folder(tmp_path / "images", per_class=5)), image_size=32, attn_res=16, steps=2)
    )
    out = tmp_path / "folder-model"
    assert main([str(run), "--out", str(out), "--fid-weights", str(stand_in_network(tmp_path / "standin.pt"))]) == 0
    card = json.loads((out / "card.json").read_text())
    assert (
        card["photo_match"] is None
        and card["photo_variety"] is None
        and card["kid"]["n"] == 7
        and card["fixed_pattern"]["n"] == 15
    )  # 15 images: two sets of 7
    assert "| data | " + str(tmp_path / "images") + " |" in (out / "README.md").read_text()


def test_a_run_of_segments_with_steps_lost_to_a_kill(tmp_path):
    run = RunDirectory(tmp_path)
    run.root.mkdir(exist_ok=True)
    config = {"batch_size": 8}
    history = [
        {"step": 0, "device": "cpu A", "config": config},
        {"step": 0, "device": "cpu B", "config": config},
        {"step": 10, "config": config},
    ]
    run.config_history.write_text("".join(json.dumps(h) + "\n" for h in history))
    metrics = [
        {"step": 5, "images_per_s": 4.0},
        {"step": 10, "images_per_s": 8.0},
        {"step": 12, "images_per_s": 2.0},
        {"step": 14, "images_per_s": 4.0},
    ]
    run.metrics.write_text("".join(json.dumps(m) + "\n" for m in metrics))
    # the first process's steps were done again by the second: only the kept records count
    assert training_segments(run, 14) == [
        {"from": 0, "to": 10, "device": "cpu B", "seconds": 10.0},
        {"from": 10, "to": 14, "device": "not recorded", "seconds": 8.0},
    ]
    assert training_segments(run, 12)[-1] == {"from": 10, "to": 12, "device": "not recorded", "seconds": 8.0}


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--kid-n", "1"], "--kid-n 1: give 0 (no KID) or at least 2"),
        (["--checkpoint", "nowhere.safetensors"], "nowhere.safetensors: no checkpoint to export"),
        (["--curve", "curve.jpg"], "--curve curve.jpg: the learning curve is drawn as a PNG"),
        (["--beside", "card.json"], "--beside draws other learning curves in the --curve PNG: give --curve too"),
        (
            ["--curve-every", "2"],
            "--curve-every chooses the checkpoints of the --curve learning curve: give --curve too",
        ),
        (["--curve", "c.png", "--curve-every", "-1"], "--curve-every -1: give a number of steps, or 0 for every"),
        (["--curve", "c.png", "--beside", "nowhere.json"], "--beside nowhere.json: not a readable card.json"),
    ],
)
def test_bad_requests_are_named(builtin_run, tmp_path, capsys, args, said):
    assert main([str(builtin_run), "--out", str(tmp_path / "out"), *args]) == 1
    assert said in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_folder_that_is_no_run_is_named(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert f"{tmp_path}: not a training run (no config_history.jsonl)" in capsys.readouterr().err
