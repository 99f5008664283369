"""--image-size: everything downstream of the models follows their size (data, DiffAugment, samples,
checkpoints, weights, generation, the attention figure, photo_match, evaluation), and what was made
at another size is refused in one line naming both sizes."""

import json

import numpy as np
import pytest
from helpers import cli_flags, final_weights, image_folder, stand_in_network, tiny_step
from PIL import Image

from tritonsagan import load_generator
from tritonsagan.data import make_dataset
from tritonsagan.data.builtin import BuiltinPhotoStream
from tritonsagan.data.folder import ImageFolderStream
from tritonsagan.data.packed_writer import main as prepare_main
from tritonsagan.evaluate import main as eval_main
from tritonsagan.generate import main as generate_main
from tritonsagan.images import PANEL_GAP, TITLE_HEIGHT
from tritonsagan.photo_match import fresh_crops_photo_match, generator_photo_match, reference_crops
from tritonsagan.train import main as train_main

SIZE = 64


@pytest.fixture(scope="module")
def run64(tmp_path_factory):
    run = tmp_path_factory.mktemp("size") / "run"
    assert (
        train_main(["--out", str(run), "--steps", "2", "--image-size", str(SIZE), "--conditional", *cli_flags()]) == 0
    )  # DiffAugment on: builtin
    return run


def test_a_run_at_64_writes_64_everywhere(run64):
    config = json.loads((run64 / "config.json").read_text())
    assert config["image_size"] == SIZE and config["diffaug"]
    assert json.loads((run64 / "generator" / "config.json").read_text())["image_size"] == SIZE
    grid = np.asarray(Image.open(run64 / "samples" / "step_0000002_ema.png"))
    assert grid.shape == (2 + 2 * (SIZE + 2), 2 + 2 * (SIZE + 2), 3)  # 4 samples, 2 x 2
    for source in (run64, run64 / "generator"):
        assert load_generator(source).config.image_size == SIZE
    assert final_weights(run64)["G.conv_out.weight"].shape[0] == 3


def test_data_streams_at_every_size(tmp_path):
    folder = image_folder(tmp_path / "src")
    for size in (32, 64, 256):
        assert BuiltinPhotoStream(0, image_size=size)[3][0].shape == (3, size, size)
        assert ImageFolderStream(folder, 0, conditional=True, image_size=size)[1][0].shape == (3, size, size)


def test_packed_datasets_record_their_size_and_train_only_at_it(tmp_path, capsys):
    src, dest = image_folder(tmp_path / "src"), tmp_path / "packed64"
    assert prepare_main([str(src), str(dest), "--conditional", "--workers", "1", "--image-size", str(SIZE)]) == 0
    assert json.loads((dest / "manifest.json").read_text())["image_size"] == SIZE
    assert make_dataset(str(dest), 0, conditional=True, image_size=SIZE)[0][0].shape == (3, SIZE, SIZE)
    capsys.readouterr()
    run = tmp_path / "run"
    assert train_main(["--out", str(run), "--data", str(dest), "--steps", "2", "--conditional", *cli_flags()]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "packed at 64x64, the model is 128x128" in err and "--image-size 64" in err
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())


def test_photo_match_at_64():
    reference = reference_crops(image_size=SIZE)
    assert reference[0].shape[-2:] == (SIZE, SIZE)
    assert fresh_crops_photo_match(reference)["accuracy"] >= 0.9


def test_generation_and_attention_figure_follow_the_weights(run64, tmp_path, capsys):
    G = load_generator(run64)
    assert generator_photo_match(G, per_class=1)["images"] == 17
    assert (
        generate_main(
            ["--weights", str(run64), "--n", "2", "--attention-maps", "--out", str(tmp_path / "attention.png")]
        )
        == 0
    )
    assert (
        generate_main(
            [
                "--weights",
                str(run64),
                "--n",
                "1",
                "--attention-maps",
                "--queries",
                "70,10",
                "--out",
                str(tmp_path / "a.png"),
            ]
        )
        == 1
    )
    assert "inside the 64x64 image" in capsys.readouterr().err

    G128 = tmp_path / "g128"
    type(G)(ch=8, num_classes=17).save_pretrained(G128)
    assert generate_main(["--weights", str(run64), str(G128), "--n", "2", "--out", str(tmp_path / "side.png")]) == 0
    width, height = Image.open(tmp_path / "side.png").size  # the 64x64 grid beside the 128x128 one, tops aligned
    assert width == (2 * 66 + 2) + PANEL_GAP + (2 * 130 + 2) and height == TITLE_HEIGHT + 132


def test_evaluation_reads_real_images_at_the_generators_size(run64, tmp_path, capsys):
    net, stats = stand_in_network(tmp_path / "net.pt"), tmp_path / "ref128.safetensors"
    common = [
        "--fid-weights",
        str(net),
        "--workers",
        "0",
        "--batch-size",
        "16",
        "--n",
        "20",
        "--kid-subset-size",
        "10",
        "--nearest-k",
        "2",
    ]
    assert eval_main([*common, "--weights", str(run64), "--out", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["reference"] == "builtin, n=20, 64x64"
    assert eval_main([*common, "--save-ref-stats", str(stats)]) == 0  # 128 without --weights
    capsys.readouterr()
    assert eval_main([*common, "--weights", str(run64), "--ref-stats", str(stats)]) == 1
    err = capsys.readouterr().err
    assert "statistics of 128x128 real images, the generator draws 64x64" in err and "Traceback" not in err
    assert eval_main([*common, "--weights", str(run64), "--image-size", "128"]) == 1
    assert "draws 64x64 images" in capsys.readouterr().err


def test_diffaugment_draws_for_the_models_size():
    step = tiny_step(num_classes=3, image_size=SIZE, conditional=True, diffaug="translation,cutout")
    draws = [step.draws(0, slot, 8)[2] for slot in range(4)]
    assert max(int(d["cutout"].max()) for d in draws) < SIZE  # square centres inside 64 (at 128 they reach 127)
    assert max(int(d["translation"].abs().max()) for d in draws) == SIZE // 8
