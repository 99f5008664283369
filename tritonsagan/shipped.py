"""Generator weights that ship inside the package, loaded by name and offline:
`load_generator("builtin-photos")`, `tritonsagan-generate --weights builtin-photos`.

Each lives in tritonsagan/pretrained/<name>/ as `tritonsagan-export` writes it from a training run:
model.safetensors (G_ema in float16) and config.json as save_pretrained writes them, README.md, its
model card (the data, the training, the device, the figures measured), and card.json, those figures.
"""

from __future__ import annotations

import os
from pathlib import Path

from tritonsagan.models.pretrained import CONFIG_NAME, WEIGHTS_NAME

SHIPPED_ROOT = Path(__file__).resolve().parent / "pretrained"
MODEL_CARD_NAME = "README.md"  # written by tritonsagan.model_card
CARD_FIGURES_NAME = "card.json"  # the model card's figures, for tables made from them
SHIPPED_FILES = (WEIGHTS_NAME, CONFIG_NAME, MODEL_CARD_NAME, CARD_FIGURES_NAME)


def shipped_names() -> list[str]:
    """The names of the weights in this installation, sorted."""
    return (
        sorted(p.name for p in SHIPPED_ROOT.iterdir() if (p / WEIGHTS_NAME).is_file()) if SHIPPED_ROOT.is_dir() else []
    )


def shipped_weights(name: str | os.PathLike) -> Path | None:
    """The folder of the shipped weights called `name`, or None when nothing ships under that name
    (a path, such as runs/demo, is never a shipped name)."""
    name = os.fspath(name)
    return SHIPPED_ROOT / name if name in shipped_names() else None


def describe_shipped() -> str:
    """For an error message: the shipped names, or that none ship in this installation."""
    names = shipped_names()
    return f"shipped weights: {', '.join(names)}" if names else "no weights ship with this installation"
