"""Weights shipped in the package: loaded by name, offline; and, for each that ships, a generator
that draws its photos."""

import json
from pathlib import Path

import pytest
import torch
from tritonsagan.models import Generator
from tritonsagan.models.pretrained import WEIGHTS_NAME

import tritonsagan.shipped as shipped
from tritonsagan import generate, load_generator
from tritonsagan.generate import main
from tritonsagan.model_card import card_table, model_card
from tritonsagan.photo_match import generator_photo_match
from tritonsagan.photo_variety import generator_photo_variety
from tritonsagan.shipped import CARD_FIGURES_NAME, MODEL_CARD_NAME, SHIPPED_FILES, shipped_names

ROOT = Path(__file__).resolve().parent.parent
MAX_WEIGHTS_BYTES = 12 * 2**20  # shipped weights keep the wheel small
PHOTO_MATCH_AT_LEAST = 0.5  # chance is 1 in 17, fresh real crops about 0.92


@pytest.fixture
def stand_in_root(tmp_path, monkeypatch):
    """A shipped-weights folder holding 'tiny-photos' (a tiny G) and an empty 'unfinished'."""
    root = tmp_path / "pretrained"
    torch.manual_seed(0)
    Generator(ch=8, num_classes=17).half().save_pretrained(root / "tiny-photos")
    (root / "unfinished").mkdir()
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", root)
    return root


def test_shipped_weights_load_by_name(stand_in_root, tmp_path, monkeypatch):
    assert shipped_names() == ["tiny-photos"]
    G = load_generator("tiny-photos")
    assert G.config.ch == 8 and not G.training and G.conv_out.weight.dtype == torch.float32
    monkeypatch.chdir(tmp_path)
    assert main(["--weights", "tiny-photos", "--n", "2", "--out", "g.png"]) == 0
    Generator(ch=8, num_classes=3).save_pretrained(tmp_path / "tiny-photos")  # a folder of that name here comes first
    assert load_generator("tiny-photos").config.num_classes == 3


def test_an_unknown_name_lists_the_shipped_ones(stand_in_root, capsys):
    assert main(["--weights", "builtin-foto", "--n", "2", "--out", "g.png"]) == 1
    assert (
        "weights not found: builtin-foto (no such file or folder, nor shipped weights of that name; shipped weights: tiny-photos)"
        in capsys.readouterr().err
    )


def test_none_shipped_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="no weights ship with this installation"):
        load_generator("builtin-photos")


# The real shipped weights (an empty set is reported as skipped).
@pytest.mark.parametrize("name", shipped_names())
def test_shipped_weights_draw_their_photos_as_their_card_says(name):
    folder = shipped.SHIPPED_ROOT / name
    assert (
        all((folder / file).is_file() for file in SHIPPED_FILES)
        and (folder / WEIGHTS_NAME).stat().st_size <= MAX_WEIGHTS_BYTES
    )
    G = load_generator(name)
    assert torch.equal(generate(G, 4, classes=[0, 5], seed=3), generate(G, 4, classes=[0, 5], seed=3))
    match = generator_photo_match(G)
    card = json.loads((folder / CARD_FIGURES_NAME).read_text())
    assert match["accuracy"] >= PHOTO_MATCH_AT_LEAST and match["accuracy"] == pytest.approx(
        card["photo_match"]["accuracy"], abs=2 / 136
    ), match
    assert generator_photo_variety(G)["variety"] == pytest.approx(card["photo_variety"]["variety"], rel=0.02)
    assert (folder / MODEL_CARD_NAME).read_text() == model_card(card)
    readme = (ROOT / "README.md").read_text()
    assert card_table(card) in readme  # the README shows the card's figures
    assert f"in about {card['training_seconds'] / 60:.0f} minutes" in " ".join(readme.split())  # and says them
