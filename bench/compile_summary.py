"""The README's table of which kernels run on which GPU, generated from the compile reports
(bench/results/compile/*.json, one per triton version; numbers are never typed by hand).

    python -m tritonsagan.bench.compile_summary bench/results/compile/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _resource_problems(row: dict, shared_limit: int) -> bool:
    """A spill, a shared-memory overflow or a failed compile (not the dot instruction alone)."""
    return "error" in row or bool(row["spill_bytes"]) or row["shared_bytes"] > shared_limit


def _kernels_cell(target: str, reports: list[dict]) -> str:
    """What the compile check found on the generation under each triton: for one that runs the Triton
    kernels, its offered configs; for one that takes the torch paths, why (the next generation's
    configs compiled there)."""
    per_triton = []
    for report in reports:
        rows = [r for r in report["rows"] if r["target"] == target]
        if report["targets"][target]["triton_kernels"]:
            bad = [r for r in rows if r["problems"]]
            dots = sorted({r["dot"] for r in rows if r["dot"] and r["dtype"] != "float32"})
            verdict = "all clean" if not bad else f"{len(bad)} fail"
            per_triton.append(
                f"triton {report['triton']}: {len(rows)} compiles of the offered configs, {verdict}; "
                f"half-precision dots {'/'.join(dots)}"
            )
            continue
        half = [r for r in rows if r["kernel"].startswith("_attention") and r["dtype"] != "float32"]
        off_tensor_cores = [r for r in half if r["dot"] != report["targets"][target]["tensor_dot"]]
        resources = [r for r in half if _resource_problems(r, report["targets"][target]["shared_limit_bytes"])]
        sn = [r for r in rows if r["kernel"].startswith("_sn")]
        per_triton.append(
            f"triton {report['triton']}: half-precision attention, {len(half)} compiles of the next generation's "
            f"configs: dots off the tensor cores in {len(off_tensor_cores)}, spills or shared-memory overflow in "
            f"{len(resources)}; spectral norm: {sum(not r['problems'] for r in sn)} of {len(sn)} clean"
        )
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
