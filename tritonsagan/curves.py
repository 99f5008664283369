"""Training curves: the run's metrics.jsonl, drawn as a picture, and tritonsagan-curves.

`MetricsLog` is what a training run writes through: one JSON line per record in metrics.jsonl,
<run>/curves.png redrawn at the logs (at most every REDRAW_SECONDS, since a drawing costs a few
tenths of a second that a fast GPU step should not wait for, and once more at the end), and
TensorBoard event files with --tensorboard. Only the
main rank writes; on other ranks every call does nothing. Drawing needs matplotlib
(`pip install matplotlib`, the package's plot extra); without it the run says so once and writes the rest.

    tritonsagan-curves runs/a runs/b --out compare.png      # several runs, one colour each
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from .atomic_write import atomic_write_bytes
from .cli import run_command
from .errors import ConfigError, TritonsaganError
from .run_directory import RunDirectory

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
REDRAW_SECONDS = 30.0

# (TensorBoard group, panel title, [(record key, line label, line style)]); list-valued keys draw one
# line per entry.
PANELS = [
    ("losses", "hinge losses", [("loss_d", "D", "-"), ("loss_g", "G", "--")]),
    ("d_logits", "D logits (mean)", [("d_real", "real", "-"), ("d_fake", "fake", "--")]),
    ("attention_gamma", "attention gamma", [("gamma_g", "G", "-"), ("gamma_d", "D", "--")]),
    ("fid", "FID (G_ema)", [("fid", "FID", "-")]),
    ("kid", "KID (G_ema)", [("kid", "KID", "-")]),
    ("throughput", "throughput (images/s)", [("images_per_s", "images/s", "-")]),
]
# A record key's TensorBoard tag: its panel's group, so TensorBoard shows the panels of curves.png.
TENSORBOARD_TAGS = {key: f"{group}/{key}" for group, _, lines in PANELS for key, _, _ in lines}


class MetricsError(TritonsaganError, ValueError):
    """A metrics file that cannot be read."""


def read_metrics(run: str | os.PathLike) -> list[dict]:
    """The records of a run directory's metrics.jsonl (or of that file itself)."""
    path, metrics = Path(run), RunDirectory(run).metrics
    path = metrics if path.is_dir() else path
    if not path.is_file():
        raise MetricsError(f"no {metrics.name} at {path}")
    return parse_metrics(path.read_text(), path)


def parse_metrics(text: str, path: Path) -> list[dict]:
    """The records of a metrics.jsonl's text; a last line cut short (a killed run) is left out."""
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break  # a last line cut short by a killed run
            raise MetricsError(f"{path}, line {number}: not JSON") from None
    return records


def _series(records: list[dict], key: str) -> list[tuple[str, list[float], list[float]]]:
    """(suffix, steps, values) for a key; a list-valued key gives one series per position."""
    rows = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
    if not rows:
        return []
    if isinstance(rows[0][1], list):
        width = max(len(v) for _, v in rows)
        return [
            (f" {i}" if width > 1 else "", [s for s, v in rows if len(v) > i], [v[i] for _, v in rows if len(v) > i])
            for i in range(width)
        ]
    return [("", [s for s, _ in rows], [float(v) for _, v in rows])]


def plot_curves(runs: dict[str, list[dict]], path: str | os.PathLike) -> Path:
    """One picture of every panel in PANELS; each run one colour, overlaid for comparison."""
    if not HAS_MATPLOTLIB:
        raise ConfigError("drawing curves needs matplotlib: pip install matplotlib (the package's plot extra)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 3).flatten()
    colours = [f"C{i}" for i in range(10)]
    for ax, (_, title, lines) in zip(axes, PANELS):
        drawn = False
        for run_index, (run_name, records) in enumerate(runs.items()):
            for key, label, style in lines:
                for suffix, steps, values in _series(records, key):
                    name = f"{label}{suffix}" if len(runs) == 1 else f"{run_name}: {label}{suffix}"
                    marker = "o" if len(steps) < 20 else None
                    ax.plot(
                        steps,
                        values,
                        style,
                        color=colours[run_index % len(colours)],
                        marker=marker,
                        markersize=3,
                        label=name,
                    )
                    drawn = True
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="gray")
    figure.suptitle(", ".join(runs))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


class MetricsLog:
    """metrics.jsonl, curves.png and (optionally) TensorBoard events of one run, main rank only.

    A run resumed at `resume_step` continues its log from there: records after that step (written
    before the last stop, by steps now done again) and a last line cut short by a kill are dropped,
    so the file holds one record per logged step; TensorBoard purges its events after that step too.
    """

    def __init__(self, run: RunDirectory, resume_step: int, enabled: bool = True, tensorboard: bool = False) -> None:
        self.run, self.enabled = run, enabled
        self.records: list[dict] = self._continue_from(resume_step) if enabled and run.metrics.is_file() else []
        self.file = run.metrics.open("a") if enabled else None
        self.drawn_at, self.drawn_records = -math.inf, len(self.records)
        self.tensorboard = None
        if enabled and tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "--tensorboard needs tensorboardX: pip install tensorboardX (the package's tensorboard extra)"
                ) from None
            self.tensorboard = SummaryWriter(str(run.tensorboard), purge_step=resume_step + 1)
        if enabled and not HAS_MATPLOTLIB:
            print(f"note: no {run.curves.name} (matplotlib is not installed: pip install matplotlib)", file=sys.stderr)

    def _continue_from(self, step: int) -> list[dict]:
        """The records up to `step`, with metrics.jsonl rewritten to hold just them when it held more."""
        text = self.run.metrics.read_text()
        records = [r for r in parse_metrics(text, self.run.metrics) if r["step"] <= step]
        kept = "".join(json.dumps(r) + "\n" for r in records)
        if kept != text:
            dropped = len(text.splitlines()) - len(records)
            atomic_write_bytes(self.run.metrics, kept.encode())
            print(
                f"{self.run.metrics}: dropped {dropped} line(s) after step {step} (or cut short), where this run resumes",
                flush=True,
            )
        return records

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.records.append(record)
        if self.tensorboard is not None:
            for key, value in record.items():
                values = value if isinstance(value, list) else [value]
                tag = TENSORBOARD_TAGS.get(key, key)
                for i, v in enumerate(values):
                    if key != "step" and isinstance(v, (int, float)):
                        self.tensorboard.add_scalar(tag if len(values) == 1 else f"{tag}_{i}", v, record["step"])
            self.tensorboard.flush()
        if time.monotonic() - self.drawn_at >= REDRAW_SECONDS:
            self._draw()

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """Pictures of a step (the sample grids, HWC uint8) for TensorBoard, under samples/<name>."""
        if self.tensorboard is not None:
            for name, image in images.items():
                self.tensorboard.add_image(f"samples/{name}", image, step, dataformats="HWC")
            self.tensorboard.flush()

    def _draw(self) -> None:
        if HAS_MATPLOTLIB:
            plot_curves({self.run.root.name: self.records}, self.run.curves)
            self.drawn_at, self.drawn_records = time.monotonic(), len(self.records)

    def close(self) -> None:
        if self.enabled and len(self.records) != self.drawn_records:
            self._draw()
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tritonsagan-curves",
        description="Draw the training curves of one or several runs from their metrics.jsonl.",
    )
    parser.add_argument("runs", nargs="+", help="run directories (or metrics.jsonl files)")
    parser.add_argument("--out", default="curves.png", help="PNG to write (default: curves.png)")
    return parser


def _run(args: argparse.Namespace) -> str:
    runs = {}
    for run in args.runs:
        path = Path(run)
        name = path.name if path.is_dir() else path.parent.name
        runs[name if name not in runs else str(path)] = read_metrics(path)
    return f"wrote {plot_curves(runs, args.out)}"


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
