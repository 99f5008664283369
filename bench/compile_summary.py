"""The README's table of which kernels run on which GPU, generated from the compile reports
(bench/results/compile/*.json, one per triton version; numbers are never typed by hand).

    python -m tritonsagan.bench.compile_summary bench/results/compile/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _kernels_cell(target: str, reports: list[dict]) -> str:
    """What runs on the generation, and the compile evidence under each triton."""
    per_triton = []
    for report in reports:
        rows = [r for r in report["rows"] if r["target"] == target]
        bad = [r for r in rows if r["problems"]]
        dots = sorted({r["dot"] for r in rows if r["dot"] and r["dtype"] != "float32" and "error" not in r})
        if report["targets"][target]["triton_kernels"]:
            verdict = "all clean" if not bad else f"{len(bad)} fail"
            per_triton.append(f"triton {report['triton']}: {len(rows)} offered configs, {verdict}")
        else:
            per_triton.append(
                f"triton {report['triton']}: {len(bad)} of {len(rows)} of the next generation's configs unusable here"
            )
        per_triton[-1] += f", half-precision dots {'/'.join(dots) or '-'}"
    return "; ".join(per_triton)


def generations_markdown(reports: list[dict]) -> str:
    """One row per checked generation: its GPUs, capability, shared memory per block, the path that
    runs there, and what the compile check found under each triton."""
    lines = [
        "| target | GPUs | compute capability | shared memory per block | attention and spectral norm | compile check |",
        "|---|---|---|---|---|---|",
    ]
    for target, facts in reports[0]["targets"].items():
        path = "Triton kernels" if facts["triton_kernels"] else "torch paths"
        kib = facts["shared_limit_bytes"] // 1024
        cells = [f"`{target}`", facts["gpus"], facts["capability"], f"{kib} KiB", path, _kernels_cell(target, reports)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print("usage: python -m tritonsagan.bench.compile_summary REPORT.json ...", file=sys.stderr)
        return 2
    reports = sorted((json.loads(p.read_text()) for p in paths), key=lambda r: r["triton"])
    print(generations_markdown(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
