"""The model card of an exported or shipped weights folder: README.md, written from card.json (the
figures tritonsagan-export reads from the run and measures on the weights), and its learning-curve
picture. Shipped weights (tritonsagan.shipped) carry both files beside the weights."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

from .atomic_write import atomic_write_bytes
from .config_flags import on_off
from .curves import HAS_MATPLOTLIB
from .errors import ConfigError
from .train_config import describe_device_settings, upgrade_saved_config


def model_card(card: dict) -> str:
    """README.md of an exported folder, from its figures (card.json)."""
    classes, side = card["generator"]["num_classes"], card["generator"]["image_size"]
    call = f"classes=list(range({classes}))" if classes else "classes=None"
    return f"""# {card["name"]}

A SAGAN generator (G_ema, the moving average of G's weights) trained with tritonsagan, exported from
step {card["step"]:,} of its run by `tritonsagan-export`. Every figure below is read from that run or
measured on these weights.

```python
import tritonsagan

G = tritonsagan.load_generator("path/to/{card["name"]}")
images = tritonsagan.generate(G, {classes or 8}, {call})  # uint8 (n, 3, {side}, {side})
```

{card_table(card)}
"""


def _percent(share: float) -> str:
    return f"{share:.0%}"


def card_table(card: dict) -> str:
    """The model card's table of figures (markdown), from card.json; the README shows the shipped ones'."""
    rows = _training_rows(card) + _measured_rows(card)
    return "| | |\n|---|---|\n" + "\n".join(f"| {key} | {text} |" for key, text in rows)


# The training settings a resume may change (train_config.RUN_IDENTITY are those it may not) that the
# card's training row reports from the step a resume changed them (export.run_settings reads the changes).
RECIPE_SETTINGS = {
    "lr_g": "lr G",
    "lr_d": "lr D",
    "beta1": "Adam beta1",
    "beta2": "Adam beta2",
    "ema_decay": "EMA decay",
    "ema_start": "EMA start step",
    "mode_seeking": "mode-seeking term weight",
    "accumulate": "micro-batches",
    "d_sn_in_g_step": "D's spectral-norm update in G's step",
    "compile": "compile",
    "precision": "precision",
    "diffaug": "DiffAugment",
}


def _setting_text(value: object) -> str:
    if isinstance(value, bool):
        return on_off(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value) or "off"


def _recipe_changes_text(changes: list[dict]) -> str:
    """'; from step 8,000: lr G 5e-05, lr D 0.0002' for each resume that changed training settings."""
    return "".join(
        f"; from step {change['step']:,}: "
        + ", ".join(
            f"{label} {_setting_text(change['changed'][name][1])}"
            for name, label in RECIPE_SETTINGS.items()
            if name in change["changed"]
        )
        for change in changes  # in the row's order: card.json's keys are sorted
    )


def _starting_config(config: dict, changes: list[dict]) -> dict:
    """The settings the run started with: `config` (those of its last steps) before `changes`."""
    config = dict(upgrade_saved_config(config))
    for change in reversed(changes):
        config.update({name: old for name, (old, _) in change["changed"].items()})
    return config


def _training_rows(card: dict) -> list[tuple[str, str]]:
    """The card's rows read from the run: the model, data, training, device and wall-clock."""
    changes = card.get("recipe_changes", [])  # cards exported before resumes' changes were recorded lack it
    config, generator = _starting_config(card["config"], changes), card["generator"]
    classes, side = generator["num_classes"], generator["image_size"]
    builtin = (
        "the 17 photos bundled in scikit-image's wheel (`--data builtin`), random square crops, each photo a class"
    )
    return [
        (
            "model",
            f"Generator, {side}x{side}, ch {generator['ch']}, z_dim {generator['z_dim']}, attention at {generator['attn_res']}x{generator['attn_res']}, "
            f"{classes or 'no'} classes{', noise inputs' if generator.get('noise_inputs') else ''}"
            f"{', reflect padding' if generator.get('padding') == 'reflect' else ''}; "
            f"stored in float16 ({card['weights_bytes'] / 2**20:.1f} MiB)",
        ),
        ("data", builtin if config["data"] == "builtin" else f"{config['data']}"),
        (
            "training",
            f"{card['step']:,} steps at batch {card['batch_size']} ({card['step'] * card['batch_size']:,} images), lr G {config['lr_g']:g}, "
            f"lr D {config['lr_d']:g}, EMA decay {config['ema_decay']:g} from step {config['ema_start']:,}"
            + (f", mode-seeking term weight {config['mode_seeking']:g}" if config.get("mode_seeking") else "")
            + "; "
            + describe_device_settings(config["compile"], config["precision"], config["diffaug"])
            + _recipe_changes_text(changes),
        ),
        ("device", "; ".join(sorted({s["device"] for s in card["segments"]}))),
        (
            "wall-clock",
            f"{card['training_seconds'] / 60:.1f} minutes of training in {len(card['segments'])} process(es), sampling and checkpoints included",
        ),
    ]


def _measured_rows(card: dict) -> list[tuple[str, str]]:
    """The card's rows measured on the weights: photo match and variety (built-in photos), KID, the fixed pattern."""
    match, kid, pattern = card["photo_match"], card["kid"], card["fixed_pattern"]
    classes = card["generator"]["num_classes"]
    rows = []
    if match:
        rows.append(
            (
                "photo match",
                f"{_percent(match['accuracy'])} of {match['images']} generated images are nearest in colour to crops of their own "
                f"class's photo (fresh real crops: {_percent(match['fresh_crops'])}; chance: 1 in {classes}); tritonsagan.photo_match",
            )
        )
    variety = card.get("photo_variety")
    if variety:
        rows.append(
            (
                "photo variety",
                f"{variety['variety']:.2f}: how far each class's {variety['images'] // classes} generated images differ from each other, "
                "over how far real crops of its photo do, the mean over classes (real crops: about 1; one image per class "
                "whatever the latent: 0); tritonsagan.photo_variety",
            )
        )
    if "not_measured" in kid:
        rows.append(("KID", f"not measured: {kid['not_measured']}"))
    else:
        rows.append(
            (
                "KID",
                f"{kid['kid']:.4f}: {kid['n']} generated images against {kid['n']} real ones (one estimate over all pairs); "
                f"{kid['n']} other real images against the same score {kid['real_vs_real']:.4f}; "
                f"feature network {kid['network']} (sha256 {kid['network_sha256'][:12]})",
            )
        )
    rows.append(
        (
            "fixed pattern",
            f"{pattern['generated']:.2f} for {pattern['n']} generated images, {pattern['real']:.2f} for as many real ones "
            "(frames and grids every image repeats; about 0 for real crops); tritonsagan.fixed_pattern",
        )
    )
    return rows


def require_matplotlib() -> None:
    if not HAS_MATPLOTLIB:
        raise ConfigError(
            "drawing the learning curve needs matplotlib: pip install matplotlib (the package's plot extra)"
        )


def _curve_panels(card: dict) -> list[tuple[str, Callable[[dict], float], float, str, tuple]]:
    """The panels a card's learning curve has: (title, its figure at a curve point, what real images
    score, what to call them, y limits)."""
    panels = []
    if card["photo_match"]:
        fresh = card["photo_match"]["fresh_crops"]
        panels.append(("photo match", lambda p: p["photo_match"]["accuracy"], fresh, "fresh real crops", (0, 1)))
    if card.get("photo_variety"):  # cards exported before it was measured lack it
        panels.append(("photo variety", lambda p: p["photo_variety"]["variety"], 1.0, "real crops", (0, None)))
    if "kid" in card["kid"]:
        kid = card["kid"]
        panels.append(
            (f"KID (n={kid['n']})", lambda p: p["kid"]["kid"], kid["real_vs_real"], "real vs real", (None, None))
        )
    fixed = card["fixed_pattern"]["real"]
    panels.append(("fixed pattern", lambda p: p["fixed_pattern"]["generated"], fixed, "real crops", (0, None)))
    return panels


def curve_figure(card: dict, path: str | Path, beside: Sequence[tuple[str, dict]] = ()) -> Path:
    """The learning curve in card.json as a PNG: photo_match, photo_variety, KID and the fixed pattern
    of G_ema by step, each beside what real images score, and beside the same figures of the
    (label, card) pairs in `beside` (other runs' exports) where they have them."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = _curve_panels(card)
    figure = Figure(figsize=(5 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    for ax, (title, value, real, real_label, ylim) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for label, shown in ((card["name"] if beside else "G_ema", card), *beside):
            try:
                values = [value(point) for point in shown["curve"]]
            except (KeyError, TypeError):  # a card without this figure (not measured, or an older export)
                continue
            ax.plot([point["step"] for point in shown["curve"]], values, "o-", label=label)
        ax.axhline(real, color="green", lw=0.8, label=real_label)
        ax.set(xlabel="step", title=title, ylim=ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle(card["name"] + "".join(f" beside {label}" for label, _ in beside))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
