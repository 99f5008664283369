"""The README's summary table, generated from bench/results/*.json (numbers are never typed by hand):
one column per bench section, each cell written by its section's module.

    python -m tritonsagan.bench.summary bench/results/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import attention, data, spectral_norm, train_step

# (column header, the cell of a report)
COLUMNS = [
    (attention.SUMMARY_HEADER, lambda report: attention.summary_cell(report.get("attention", []))),
    (
        spectral_norm.SUMMARY_HEADER,
        lambda report: (
            spectral_norm.summary_cell(report["spectral_norm"]["totals"]) if "spectral_norm" in report else "-"
        ),
    ),
    (train_step.SUMMARY_HEADER, lambda report: train_step.summary_cell(report.get("train_step", []))),
    (data.SUMMARY_HEADER, lambda report: data.summary_cell(report.get("data"))),
]


TABLE_SECTIONS = (
    "attention",
    "spectral_norm",
    "train_step",
    "data",
)  # a report with none of them (learning alone) has no row


def summary_markdown(reports: list[tuple[str, dict]]) -> str:
    lines = [
        "| report | device | " + " | ".join(header for header, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for name, report in reports:
        if not any(section in report for section in TABLE_SECTIONS):
            continue
        env = report["environment"]
        device = f"{env['device']} (torch {env['torch']}{', quick' if report.get('quick') else ''})"
        lines.append(f"| `{name}` | {device} | " + " | ".join(cell(report) for _, cell in COLUMNS) + " |")
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
