"""The README's summary table, generated from bench/results/*.json (numbers are never typed by hand).

    python -m tritonsagan.bench.summary bench/results/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def format_number(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _attention_cell(rows: list[dict]) -> str:
    """fwd+bwd ms at the largest batch of the G 32x32 shape: ours / best SDPA / naive bmm+softmax."""
    g_rows = [r for r in rows if r["shape"] == "G 32x32"]
    if not g_rows:
        return "-"
    batch = max(r["batch"] for r in g_rows)
    times = {r["impl"]: r.get("fwd_bwd_ms") for r in g_rows if r["batch"] == batch and r["available"]}
    sdpa = min((t for name, t in times.items() if name.startswith("sdpa")), default=None)
    return f"batch {batch}: {format_number(times.get('triton'))} / {format_number(sdpa)} / {format_number(times.get('naive bmm+softmax'))}"


def _sn_cell(totals: dict) -> str:
    fused = totals.get("triton fused", {}).get("fwd_bwd_ms")
    return f"{format_number(fused)} / {format_number(totals.get('torch parametrization', {}).get('fwd_bwd_ms'))}"


TRAIN_IDS = ("a", "a'", "b", "c", "d", "e", "f")


def _train_cell(rows: list[dict]) -> str:
    if not rows:
        return "-"
    by_id = {r["id"]: r for r in rows}
    speeds = " / ".join(format_number(by_id[i]["images_per_s"]) if i in by_id and by_id[i]["available"] else "n/a" for i in TRAIN_IDS)
    return f"ch {rows[0]['ch']}, batch {rows[0]['batch']}: {speeds}"


def _data_cell(section: dict | None) -> str:
    """ms per sample of the folder stream (smallest / largest folder); best packed loader images/s."""
    if not section:
        return "-"
    folder = sorted(section["folder"], key=lambda r: r["files"])
    packed = max(r["images_per_s"] for r in section["loader"] if r["source"] == "packed")
    return f"{format_number(folder[0]['ms_per_sample'])} / {format_number(folder[-1]['ms_per_sample'])}; {format_number(packed)}"


def summary_markdown(reports: list[tuple[str, dict]]) -> str:
    lines = [
        "| report | device | attention fwd+bwd ms, G 32x32: Triton / best SDPA / bmm+softmax "
        "| SN fwd+bwd ms, all layers of G and D: fused / torch | train step images/s: (a) / (a') / (b) / (c) / (d) / (e) / (f) "
        "| data: folder stream ms/sample, 100 / 200,000 files; packed loader images/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, report in reports:
        env = report["environment"]
        device = f"{env['device']} (torch {env['torch']}{', quick' if report.get('quick') else ''})"
        attention = _attention_cell(report.get("attention", []))
        sn = _sn_cell(report["spectral_norm"]["totals"]) if "spectral_norm" in report else "-"
        lines.append(f"| `{name}` | {device} | {attention} | {sn} | {_train_cell(report.get('train_step', []))} | {_data_cell(report.get('data'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print("usage: python -m tritonsagan.bench.summary REPORT.json ...", file=sys.stderr)
        return 2
    print(summary_markdown([(p.name, json.loads(p.read_text())) for p in paths]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
