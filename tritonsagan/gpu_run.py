"""The GPU run as ready commands: `python -m tritonsagan.gpu_run STEP --out DIR [--rehearse]`.

A GPU comes rarely, for about 30 minutes, at most 10 minutes a command, on a machine that reaches
nothing (Python 3.12, torch 2.11, triton 3.6, numpy, scipy, pillow, scikit-image, matplotlib,
safetensors, einops, rich, pytest; `pip install -e . --no-deps` installs the package there). Each
step finishes well inside 10 minutes on an H100, compiles included, fetches nothing, and writes its
logs and JSON into DIR:

- `check`: `pytest -m gpu`, the Hopper compile check under that machine's triton, and a 3-minute
  CUDA training run with the defaults (compile, bf16, Triton kernels; ch 64, batch 256, builtin
  photos): images/s, losses, no NaN, sample grids that change. Summary: DIR/check.json.
- `bench --part kernels|train|switches|compile`: one part of the full `tritonsagan-bench` report,
  DIR/<device>_<date>.json; `--merge-with REPORT` starts from an earlier part's report, so the four
  parts make one report.
- `pretrained`: trains the 'builtin-photos' weights (class-conditional on the built-in photos) for
  `--minutes` in `--run-dir`, resuming what is there: run again on the same (warm) machine to
  continue. DIR gets G_ema in float16 (builtin-photos/), metrics, curves and the last grids.

`--rehearse` runs the same steps on the CPU at tiny sizes (tests/test_gpu_run.py runs it), so the
commands are known to work before a GPU is there.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from tritonsagan.models import Generator
from tritonsagan.models.pretrained import WEIGHTS_NAME

from .atomic_write import atomic_write_json
from .cli import run_command
from .curves import read_metrics
from .errors import ConfigError, TritonsaganError
from .run_directory import RunDirectory

REPO = Path(__file__).resolve().parents[1]  # a checkout: tests/ and the kernels beside the package
BENCH_PARTS = {  # each one GPU-run command; together the whole report
    "kernels": ["--only", "attention,sn,data,hopper"],
    "train": ["--only", "train", "--variants", "core"],
    "switches": ["--only", "train", "--variants", "switches"],
    "compile": ["--only", "train", "--variants", "compile"],
}
TINY = {"ch": 8, "batch-size": 4, "workers": 0, "device": "cpu", "num-samples": 4}  # --rehearse sizes
CHECK_TRAINING = {"ch": 64, "batch-size": 256, "steps": 1_000_000, "max-minutes": 3, "log-every": 25, "sample-every": 200,
                  "save-every": 1_000_000}  # fmt: skip
# Sized for one or two 8-minute commands on an H100: a width whose G_ema fits in ~9 MB as float16,
# an EMA that starts early enough to matter in a short run.
PRETRAINED_TRAINING = {"ch": 24, "batch-size": 128, "steps": 1_000_000, "log-every": 100, "sample-every": 1000, "save-every": 1000,
                       "keep-checkpoints": 1, "ema-start": 1000, "ema-decay": 0.999}  # fmt: skip
PRETRAINED_NAME = "builtin-photos"
MAX_WEIGHTS_BYTES = 12 * 2**20  # what a GPU run can bring back and the wheel can carry


class StepFailed(TritonsaganError, RuntimeError):
    """A step ran to its end with a failure in it (its logs and JSON say which)."""


def _flags(options: dict) -> list[str]:
    return [part for key, value in options.items() for part in (f"--{key}", str(value))]


def _run_logged(command: list[str], log: Path) -> int:
    """Run a command with its output into `log` (appended); its exit code."""
    with log.open("a") as stream:
        stream.write(f"$ {' '.join(command)}\n")
        stream.flush()
        return subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO).returncode


def _train(options: dict, log: Path, *switches: str) -> int:
    """tritonsagan-train with these flags; it resumes what is in its --out."""
    return _run_logged([sys.executable, "-m", "tritonsagan.train", *switches, *_flags(options)], log)


def _training_summary(run: RunDirectory, exit_code: int) -> dict:
    """What a person checks of a training run: it ran, it stayed finite, its samples moved."""
    records = [r for r in read_metrics(run.metrics) if "loss_d" in r] if run.metrics.is_file() else []
    losses = [r[key] for r in records for key in ("loss_d", "loss_g")]
    grids = run.sample_grids(ema=True)
    change = None
    if len(grids) > 1:  # mean absolute change of the EMA grid between the first and the last, in [0, 1]
        first, last = (np.asarray(Image.open(p), dtype=np.float64) for p in (grids[0], grids[-1]))
        change = float(np.abs(last - first).mean() / 255)
    return {
        "exit_code": exit_code,
        "steps": records[-1]["step"] if records else 0,
        "images_per_s": records[-1]["images_per_s"] if records else None,
        "losses_finite": bool(losses) and all(math.isfinite(x) for x in losses),
        "first": records[0] if records else None,
        "last": records[-1] if records else None,
        "grids": [p.name for p in grids],
        "grid_change": change,
    }


def _pytest_counts(junit: Path) -> dict:
    if not junit.is_file():
        return {}
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}


def check(out: Path, rehearse: bool) -> bool:
    from tritonsagan.bench import hopper

    junit = out / "pytest-gpu.xml"
    code = _run_logged([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(REPO / "tests"), f"--junitxml={junit}"],
                       out / "pytest-gpu.log")  # fmt: skip
    summary: dict = {"pytest_gpu": {"exit_code": code, **_pytest_counts(junit)}}
    try:
        report = hopper.compile_report(quick=rehearse)
        atomic_write_json(out / "hopper.json", report)
        problems = [f"{r['kernel']} [{r['shape']}, {r['dtype']}, {r['precision']}] {r['config']}: {'; '.join(r['problems'])}" for r in report["rows"] if r["problems"]]
        summary["hopper"] = {"triton": report["triton"], "compiled": len(report["rows"]), "problems": problems}
    except hopper.HopperCheckUnavailable as err:
        summary["hopper"] = {"unavailable": str(err)}
    run = RunDirectory(out / "train-check")
    options = {**CHECK_TRAINING, **TINY, "steps": 4, "max-minutes": 0, "log-every": 1, "sample-every": 2} if rehearse else CHECK_TRAINING
    summary["train"] = _training_summary(run, _train({**options, "out": run.root}, out / "train-check.log"))
    atomic_write_json(out / "check.json", summary)
    train = summary["train"]
    return code == 0 and not summary["hopper"].get("problems") and train["exit_code"] == 0 and train["losses_finite"]


def bench(out: Path, part: str, rehearse: bool, merge_with: Path | None) -> bool:
    target: list[str] = [f"{out}/"]
    if merge_with is not None:
        if not merge_with.is_file():
            raise ConfigError(f"--merge-with {merge_with}: no such report")
        shutil.copy(merge_with, out / merge_with.name)
        target = [str(out / merge_with.name), "--merge"]
    command = [sys.executable, "-m", "tritonsagan.bench.cli", *BENCH_PARTS[part], "--json", *target]
    return _run_logged(command + (["--quick", "--device", "cpu"] if rehearse else []), out / f"bench-{part}.log") == 0


def pretrained(out: Path, run_dir: Path, minutes: float, rehearse: bool) -> bool:

    options = {**PRETRAINED_TRAINING, "data": "builtin", "max-minutes": minutes, "out": run_dir}
    if rehearse:
        options.update({**TINY, "steps": 6, "max-minutes": 0, "log-every": 2, "sample-every": 3, "save-every": 3, "ema-start": 2})
    code = _train(options, out / "pretrained.log", "--conditional")
    run = RunDirectory(run_dir)
    summary = {"run": _training_summary(run, code)}
    if run.generator.is_dir():
        G_ema = Generator.from_pretrained(run.generator).half()
        weights = G_ema.save_pretrained(out / PRETRAINED_NAME) / WEIGHTS_NAME
        summary["weights_bytes"] = weights.stat().st_size
        for path in (run.metrics, run.config, run.curves, *run.sample_grids(ema=True)[-1:], *run.sample_grids(ema=False)[-1:]):
            if path.is_file():
                shutil.copy(path, out / path.name)
    atomic_write_json(out / "pretrained.json", summary)
    return code == 0 and summary["run"]["losses_finite"] and summary.get("weights_bytes", math.inf) <= MAX_WEIGHTS_BYTES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tritonsagan.gpu_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("check", "bench", "pretrained"),
                        help="check: pytest -m gpu, Hopper compile, a short training; bench: one part of the report; pretrained: the builtin-photos weights")  # fmt: skip
    parser.add_argument("--out", required=True, help="folder for the logs and JSON (created)")
    parser.add_argument("--rehearse", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument("--part", choices=tuple(BENCH_PARTS), default="kernels", help="bench: which part of the report (default: kernels)")
    parser.add_argument("--merge-with", type=Path, help="bench: an earlier part's report to add this part to")
    parser.add_argument("--run-dir", type=Path, default=Path("runs") / PRETRAINED_NAME, help="pretrained: the training run (resumed when there)")
    parser.add_argument("--minutes", type=float, default=8.0, help="pretrained: minutes of training in this command (default: 8)")
    return parser


def _run(args: argparse.Namespace) -> str:
    out = Path(args.out).resolve()  # the commands run from the checkout, wherever this one was started
    out.mkdir(parents=True, exist_ok=True)
    if args.step == "check":
        ok = check(out, args.rehearse)
    elif args.step == "bench":
        ok = bench(out, args.part, args.rehearse, args.merge_with and args.merge_with.resolve())
    else:
        run_dir = out / "pretrained-run" if args.rehearse else args.run_dir.resolve()
        ok = pretrained(out, run_dir, args.minutes, args.rehearse)
    if not ok:
        raise StepFailed(f"gpu_run {args.step}: something failed; see the logs and JSON in {out}")
    return f"gpu_run {args.step}: done; logs and JSON in {out}"


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
