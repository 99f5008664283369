"""tritonsagan-bench: attention, spectral norm and the training step, side by side with the alternatives;
(--only compile) every Triton kernel compiled for each checked NVIDIA generation, which needs no GPU;
and (--only learning) how well a short training run learns.

This module only assembles: each section's module (attention, spectral_norm, train_step, data,
compile_check, targets, learning) runs its measurements and owns its implementation names, its table and its cells.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch
from rich.console import Console

from tritonsagan.atomic_write import atomic_write_bytes
from tritonsagan.cli import add_device_argument, device_name, resolve_device, run_command
from tritonsagan.errors import ConfigError, TritonsaganError

from . import attention, compile_check, data, floor, learning, spectral_norm, targets, train_step

TIMED_SECTIONS = ("attention", "sn", "train", "data")
ALL_SECTIONS = (*TIMED_SECTIONS, "compile", "learning")


class CompileCheckFailed(TritonsaganError, RuntimeError):
    """A config the package offers on a checked GPU generation spills, overflows shared memory or fails to compile."""


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        git = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
        commit = git.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "git": commit,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def environment_line(env: dict, quick: bool) -> str:
    """The report's first line: where and with what it measures."""
    triton = f"triton {env['triton']}" if env["triton"] else "no triton"
    mode = ", --quick" if quick else ""
    return (
        f"tritonsagan-bench on {env['device']} ({env['device_type']}{mode}): torch {env['torch']}, {triton}, "
        f"Python {env['python']}, git {env['git'] or 'unknown'}, {env['date']}"
    )


def report_name(report: dict) -> str:
    """<device>_<date>.json, e.g. nvidia-h100-80gb-hbm3_2026-11-22.json or cpu-amd-epyc-2-threads_2026-11-22.json."""
    env = report["environment"]
    device = env["device"] if env["device_type"] == "cuda" else f"cpu {env['device']}"
    return f"{re.sub(r'[^a-z0-9]+', '-', device.lower()).strip('-')}_{env['date'][:10]}.json"


def run(
    device: torch.device,
    sections: set[str],
    quick: bool,
    variants: list[train_step.Variant],
    console: Console,
    learning_options: dict | None = None,
    compile_targets: list[str] | None = None,
) -> dict:
    report: dict = {"environment": environment(device), "quick": quick}
    console.print(environment_line(report["environment"], quick), highlight=False)
    if "compile" in sections:
        report["compile"] = compile_check.compile_report(compile_targets or list(compile_check.TARGETS))
        console.print(compile_check.report_table(report["compile"]))
    if "learning" in sections:
        report["learning"] = learning.run(
            device, quick, **(learning_options or {}), log=lambda line: console.print(line, highlight=False)
        )
        console.print(learning.results_table(report["learning"]))
    if not sections & set(TIMED_SECTIONS):
        return report
    report["floor"] = floor.measure_floor(device, quick)
    console.print(
        f"device floor: {report['floor']['flops_per_s'] / 1e12:.1f} TFLOP/s ({report['floor']['matmul_dtype']} matmul), "
        f"{report['floor']['bytes_per_s'] / 1e9:.0f} GB/s (copy)"
    )
    if "attention" in sections:
        report["attention"] = attention.run(device, report["floor"], quick)
        console.print(attention.results_table(report["attention"]))
    if "sn" in sections:
        rows = spectral_norm.run(device, quick)
        report["spectral_norm"] = {"layers": rows, "totals": spectral_norm.totals(rows)}
        console.print(spectral_norm.results_table(rows, report["spectral_norm"]["totals"]))
    if "train" in sections:
        report["train_step"] = train_step.run(device, report["floor"], quick, variants)
        console.print(train_step.results_table(report["train_step"]))
    if "data" in sections:
        report["data"] = data.run(quick)
        for table in data.results_tables(report["data"]):
            console.print(table)
    report["targets"] = targets.evaluate_targets(report)
    console.print(targets.results_table(report["targets"]))
    return report


def merge_reports(earlier: dict, later: dict) -> dict:
    """`later`'s sections over `earlier`'s (training-step rows by variant id), targets re-evaluated:
    one report from several commands (each section, or each group of variants, on its own)."""
    merged = {**earlier, **later, "quick": earlier.get("quick", False) or later["quick"]}
    if "train_step" in earlier and "train_step" in later:
        merged["train_step"] = train_step.merge_rows(earlier["train_step"], later["train_step"])
    merged["targets"] = targets.evaluate_targets(merged)
    return merged


def parse_sections(text: str | None) -> set[str]:
    """--only's comma list (default: every timed section)."""
    sections = {
        part.strip() for part in (text or ",".join(TIMED_SECTIONS)).split(",") if part.strip()
    }  # learning only when named
    unknown = sorted(sections - set(ALL_SECTIONS))
    if unknown:
        raise ConfigError(f"--only: unknown section {', '.join(unknown)}; sections: {', '.join(ALL_SECTIONS)}")
    return sections


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritonsagan-bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repetitions (smaller models on CPU)")
    parser.add_argument(
        "--only",
        help=f"run these sections only (comma list of {', '.join(ALL_SECTIONS)}; default: {', '.join(TIMED_SECTIONS)}; "
        "learning trains for about 30 minutes on two CPU cores)",
    )
    parser.add_argument(
        "--targets",
        type=compile_check.parse_targets,
        help=f"compile: the GPU generations to compile every Triton kernel for, no GPU needed (comma list of "
        f"{', '.join(compile_check.TARGETS)}; default: all); registers, spills, shared memory and dot instructions "
        "per offered autotune config; exits 1 when one fails",
    )
    parser.add_argument(
        "--variants",
        help=f"training-step variants: comma list of ids ({', '.join(train_step.VARIANT_IDS)}) "
        f"or groups ({', '.join(train_step.VARIANT_GROUPS)}); default: all",
    )
    add_device_argument(parser)
    parser.add_argument(
        "--samples", help="learning: write G_ema's grid (a row per class) at each measured step into this folder"
    )
    parser.add_argument(
        "--learning-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="learning: a TrainConfig field to change from the recipe, e.g. class_bn_init=identity (repeatable)",
    )
    parser.add_argument("--learning-steps", type=int, help=f"learning: steps to train (default: {learning.STEPS})")
    parser.add_argument(
        "--learning-every", type=int, help=f"learning: steps between measurements (default: {learning.EVERY})"
    )
    parser.add_argument(
        "--json", help="write every number to this JSON file, or into this folder as <device>_<date>.json"
    )
    parser.add_argument(
        "--merge", action="store_true", help="with --json: add this run's sections to the report already there"
    )
    return parser


def _run(args: argparse.Namespace) -> str | None:
    device = torch.device(resolve_device(args.device))
    sections, variants = parse_sections(args.only), train_step.select_variants(args.variants)
    if args.targets and "compile" not in sections:
        raise ConfigError("--targets chooses what --only compile compiles for: add compile to --only")
    # Off a terminal (a log file, CI) rich would wrap the tables at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    learning_options = {
        "overrides": learning.parse_overrides(args.learning_set),
        "steps": args.learning_steps,
        "every": args.learning_every,
        "samples": Path(args.samples) if args.samples else None,
    }
    report = run(device, sections, args.quick, variants, console, learning_options, args.targets)
    written = None
    if args.json:
        path = Path(args.json)
        if args.json.endswith("/") or path.is_dir():
            path = path / report_name(report)
        if args.merge and path.is_file():
            report = merge_reports(json.loads(path.read_text()), report)
        atomic_write_bytes(path, (json.dumps(report, indent=2) + "\n").encode())
        written = f"wrote {path}"
    failed = compile_check.failures(report["compile"]) if "compile" in sections else []
    if failed:
        listed = "; ".join(compile_check.describe_failure(row) for row in failed[:5])
        raise CompileCheckFailed(
            f"the compile check failed for {len(failed)} offered config(s)"
            + (f" (report {path})" if written else "")
            + f": {listed}"
            + (" ..." if len(failed) > 5 else "")
        )
    return written


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
