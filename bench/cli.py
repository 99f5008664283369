"""tritonsagan-bench: attention, spectral norm and the training step, side by side with the alternatives;
and (--hopper) every Triton kernel compiled for Hopper, which needs no GPU."""

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
from rich.table import Table

from tritonsagan.atomic_write import atomic_write_bytes
from tritonsagan.cli import add_device_argument, resolve_device, run_command
from tritonsagan.errors import ConfigError

from . import attention, data, floor, hopper, spectral_norm, train_step
from .targets import evaluate_targets

TIMED_SECTIONS = ("attention", "sn", "train", "data")
ALL_SECTIONS = (*TIMED_SECTIONS, "hopper")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10)
        commit = git.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_model()}, {torch.get_num_threads()} threads"
    return {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "git": commit,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def report_name(report: dict) -> str:
    """<device>_<date>.json, e.g. nvidia-h100-80gb-hbm3_2026-11-22.json or cpu-amd-epyc-2-threads_2026-11-22.json."""
    env = report["environment"]
    device = env["device"] if env["device_type"] == "cuda" else f"cpu {env['device']}"
    return f"{re.sub(r'[^a-z0-9]+', '-', device.lower()).strip('-')}_{env['date'][:10]}.json"


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    return str(value)


def _ratio(base: float | None, value: float | None) -> str:
    return f"{base / value:.2f}x" if base and value else "-"


def attention_table(rows: list[dict]) -> Table:
    table = Table(title="Attention (fwd+bwd speed-up vs naive bmm+softmax)")
    for column in ("shape", "batch", "impl", "fwd ms", "fwd+bwd ms", "TFLOP/s", "GB/s", "% floor", "peak MiB", "vs naive"):
        table.add_column(column)
    naive = {(r["shape"], r["batch"]): r.get("fwd_bwd_ms") for r in rows if r["impl"] == "naive bmm+softmax"}
    for r in rows:
        if not r["available"]:
            table.add_row(r["shape"], str(r["batch"]), r["impl"], "n/a", *["-"] * 6)
            continue
        peak = r["peak_extra_bytes"] / 2**20 if r["peak_extra_bytes"] is not None else None
        table.add_row(
            r["shape"], str(r["batch"]), r["impl"], _fmt(r["fwd_ms"]), _fmt(r["fwd_bwd_ms"]), _fmt(r["fwd_bwd_tflops"]),
            _fmt(r["fwd_bwd_gbps"]), _fmt(r["fwd_bwd_pct_of_floor"]), _fmt(peak), _ratio(naive.get((r["shape"], r["batch"])), r["fwd_bwd_ms"]),
        )  # fmt: skip
    return table


def sn_table(rows: list[dict], totals: dict) -> Table:
    table = Table(title="Spectral norm, training forward + backward (speed-up vs torch parametrization)")
    for column in ("weight shape", "layers", "impl", "fwd ms", "fwd+bwd ms", "vs torch"):
        table.add_column(column)
    torch_times = {tuple(r["shape"]): r.get("fwd_bwd_ms") for r in rows if r["impl"] == "torch parametrization"}
    for r in rows:
        if not r["available"]:
            table.add_row(str(tuple(r["shape"])), str(r["layers"]), r["impl"], "n/a", "-", "-")
            continue
        table.add_row(str(tuple(r["shape"])), str(r["layers"]), r["impl"], _fmt(r["fwd_ms"]), _fmt(r["fwd_bwd_ms"]), _ratio(torch_times.get(tuple(r["shape"])), r["fwd_bwd_ms"]))
    base = totals.get("torch parametrization", {}).get("fwd_bwd_ms")
    for impl, total in totals.items():
        table.add_row("all layers of G and D", "", impl, _fmt(total["fwd_ms"]), _fmt(total["fwd_bwd_ms"]), _ratio(base, total["fwd_bwd_ms"]))
    return table


def train_table(rows: list[dict]) -> Table:
    table = Table(title="Training step at 128x128 (speed-up vs the port-style reference, at float32 (a) and at equal precision (a'))")
    for column in ("variant", "ch", "batch", "step ms", "images/s", "% floor", "peak MiB", "vs (a)", "vs (a')"):
        table.add_column(column)
    base = {r["id"]: r.get("step_ms") for r in rows if r["id"] in ("a", "a'") and r["available"]}
    for r in rows:
        if not r["available"]:
            table.add_row(r["variant"], str(r["ch"]), str(r["batch"]), "n/a", r.get("reason", "-"), *["-"] * 4)
            continue
        peak = r["peak_extra_bytes"] / 2**20 if r["peak_extra_bytes"] is not None else None
        table.add_row(
            r["variant"], str(r["ch"]), str(r["batch"]), _fmt(r["step_ms"]), _fmt(r["images_per_s"]), _fmt(r["pct_of_floor"]), _fmt(peak),
            _ratio(base.get("a"), r["step_ms"]), _ratio(base.get("a'"), r["step_ms"]),
        )  # fmt: skip
    return table


def data_tables(section: dict) -> list[Table]:
    samples = Table(title="Data: per-sample cost (uint8 128x128, as training reads it)")
    for column in ("source", "ms per sample", "samples/s"):
        samples.add_column(column)
    for r in section["folder"]:
        samples.add_row(f"image folder, {r['files']} files", _fmt(r["ms_per_sample"]), _fmt(1e3 / r["ms_per_sample"]))
    packed = section["packed"]
    samples.add_row(f"packed, {packed['images']} images", _fmt(packed["ms_per_sample"]), _fmt(1e3 / packed["ms_per_sample"]))
    loader = Table(title="Data: whole DataLoader (batches of uint8 images, flips included)")
    for column in ("source", "workers", "batch", "images/s"):
        loader.add_column(column)
    for r in section["loader"]:
        loader.add_row(r["source"], str(r["workers"]), str(r["batch"]), _fmt(r["images_per_s"]))
    return [samples, loader]


def targets_table(targets: list[dict]) -> Table:
    table = Table(title="Targets")
    for column in ("target", "required", "measured", "status"):
        table.add_column(column)
    for t in targets:
        table.add_row(t["target"], t["required"], _fmt(t["measured"]), t["status"])
    return table


def run(device: torch.device, sections: set[str], quick: bool, variants: list[train_step.Variant], console: Console) -> dict:
    report: dict = {"environment": environment(device), "quick": quick}
    console.print(report["environment"])
    if "hopper" in sections:
        report["hopper"] = hopper.compile_report()
        console.print(hopper.report_table(report["hopper"]))
    if not sections & set(TIMED_SECTIONS):
        return report
    report["floor"] = floor.measure_floor(device, quick)
    console.print(f"device floor: {report['floor']['flops_per_s'] / 1e12:.1f} TFLOP/s ({report['floor']['matmul_dtype']} matmul), "
                  f"{report['floor']['bytes_per_s'] / 1e9:.0f} GB/s (copy)")  # fmt: skip
    if "attention" in sections:
        report["attention"] = attention.run(device, report["floor"], quick)
        console.print(attention_table(report["attention"]))
    if "sn" in sections:
        rows = spectral_norm.run(device, quick)
        report["spectral_norm"] = {"layers": rows, "totals": spectral_norm.totals(rows)}
        console.print(sn_table(rows, report["spectral_norm"]["totals"]))
    if "train" in sections:
        report["train_step"] = train_step.run(device, report["floor"], quick, variants)
        console.print(train_table(report["train_step"]))
    if "data" in sections:
        report["data"] = data.run(quick)
        for table in data_tables(report["data"]):
            console.print(table)
    report["targets"] = evaluate_targets(report)
    console.print(targets_table(report["targets"]))
    return report


def merge_reports(earlier: dict, later: dict) -> dict:
    """`later`'s sections over `earlier`'s (training-step rows by variant id), targets re-evaluated:
    one report from several commands, each inside the GPU machine's time limit per command."""
    merged = {**earlier, **later, "quick": earlier.get("quick", False) or later["quick"]}
    if "train_step" in earlier and "train_step" in later:
        rows = {r["id"]: r for r in earlier["train_step"] + later["train_step"]}
        merged["train_step"] = [rows[i] for i in train_step.VARIANT_IDS if i in rows]
    merged["targets"] = evaluate_targets(merged)
    return merged


def parse_sections(text: str | None, with_hopper: bool) -> set[str]:
    """--only's comma list (default: every timed section), plus hopper with --hopper."""
    sections = {part.strip() for part in (text or ",".join(TIMED_SECTIONS)).split(",") if part.strip()}
    unknown = sorted(sections - set(ALL_SECTIONS))
    if unknown:
        raise ConfigError(f"--only: unknown section {', '.join(unknown)}; sections: {', '.join(ALL_SECTIONS)}")
    return sections | ({"hopper"} if with_hopper else set())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritonsagan-bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repetitions (smaller models on CPU)")
    parser.add_argument("--only", help=f"run these sections only (comma list of {', '.join(ALL_SECTIONS)})")
    parser.add_argument("--hopper", action="store_true", help="also compile every Triton kernel for Hopper (sm_90a, no GPU needed): "
                        "registers, spills, shared memory, dot instructions per autotune config")  # fmt: skip
    parser.add_argument("--variants", help=f"training-step variants: comma list of ids ({', '.join(train_step.VARIANT_IDS)}) "
                        f"or groups ({', '.join(train_step.VARIANT_GROUPS)}); default: all")  # fmt: skip
    add_device_argument(parser)
    parser.add_argument("--json", help="write every number to this JSON file, or into this folder as <device>_<date>.json")
    parser.add_argument("--merge", action="store_true", help="with --json: add this run's sections to the report already there")
    return parser


def _run(args: argparse.Namespace) -> str | None:
    device = torch.device(resolve_device(args.device))
    sections, variants = parse_sections(args.only, args.hopper), train_step.select_variants(args.variants)
    # Off a terminal (a log file, CI) rich would wrap the tables at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    report = run(device, sections, args.quick, variants, console)
    if not args.json:
        return None
    path = Path(args.json)
    if args.json.endswith("/") or path.is_dir():
        path = path / report_name(report)
    if args.merge and path.is_file():
        report = merge_reports(json.loads(path.read_text()), report)
    atomic_write_bytes(path, (json.dumps(report, indent=2) + "\n").encode())
    return f"wrote {path}"


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
