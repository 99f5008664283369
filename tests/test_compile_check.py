"""Every Triton kernel of kernels/ compiled without a GPU for each checked NVIDIA generation (sm_75
T4 to sm_90a H100), for every autotune config it would offer there at the package's shapes: no
spills, within the generation's shared memory, half-precision dots on its tensor cores (wgmma on
Hopper, mma before). A generation that takes the torch paths is compiled too, as the evidence why.

The interpreter never shows register spills, shared-memory overflow or dots that fall back from the
tensor cores; this compile does. The report is built once per session in a fresh process (see
tritonsagan.bench.compile_check); its cache of results makes an unchanged check fast.
"""

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from tritonsagan.bench.compile_check import (
    GROUPED_SHAPE,
    TARGETS,
    CompileCheckUnavailable,
    compile_report,
    failures,
)
from tritonsagan.bench.compile_summary import generations_markdown
from tritonsagan.bench.spectral_norm import layer_shapes

ROOT = Path(__file__).parents[1]
KERNEL_FILES = sorted((ROOT / "kernels").glob("*_kernels.py"))
REPORTS = ROOT / "bench" / "results" / "compile"
PACKAGE_HEAD_DIMS = {
    "d_qk 8, d_v 32",
    "d_qk 16, d_v 64",
    "d_qk 32, d_v 128",
    "d_qk 64, d_v 256",
}  # G and D at ch 32, 64, 128
TRITON_TARGETS = [name for name, generation in TARGETS.items() if generation.triton]


@pytest.fixture(scope="module")
def report() -> dict:
    try:
        return compile_report()
    except CompileCheckUnavailable as err:
        pytest.skip(f"this triton cannot compile for NVIDIA GPUs: {err}")


def _rows(report: dict, target: str) -> list[dict]:
    return [r for r in report["rows"] if r["target"] == target]


def _label(row: dict) -> str:
    return f"{row['target']} {row['kernel']} [{row['shape']}, {row['dtype']}, {row['precision']}] {row['config']}"


def test_the_report_covers_every_target_with_its_limits(report):
    assert list(report["targets"]) == list(TARGETS) == ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90a"]
    limits = {name: target["shared_limit_bytes"] for name, target in report["targets"].items()}
    assert limits == {"sm_75": 65536, "sm_80": 166912, "sm_86": 101376, "sm_89": 101376, "sm_90a": 232448}
    assert {r["target"] for r in report["rows"]} == set(TARGETS)


@pytest.mark.parametrize("target", TRITON_TARGETS)
def test_every_offered_config_compiles_without_spills_within_shared_memory(report, target):
    rows = _rows(report, target)
    assert rows and all(r["offered"] for r in rows)
    bad = [f"{_label(r)}: {'; '.join(r['problems'])}" for r in rows if r["problems"]]
    assert not bad, f"configs the autotuner would try that are unusable on {target}:\n" + "\n".join(bad)
    limit = TARGETS[target].shared_bytes
    for row in rows:
        assert row["spill_bytes"] == 0 and 0 <= row["shared_bytes"] <= limit and row["registers"] <= 255, _label(row)


@pytest.mark.parametrize("target", TRITON_TARGETS)
def test_half_precision_dots_use_the_tensor_cores(report, target):
    rows = _rows(report, target)
    half = [r for r in rows if r["dtype"] in ("float16", "bfloat16") and r["kernel"].startswith("_attention")]
    expected = TARGETS[target].tensor_dot
    assert half and all(r["dot"] == expected for r in half), [_label(r) for r in half if r["dot"] != expected]
    assert all(r["dot"] is None for r in rows if r["kernel"].startswith("_sn"))  # no dots in the SN kernels


def test_a_generation_without_triton_kernels_shows_why(report):
    """The torch paths run where the configs the next generation offers would spill, overflow shared
    memory or miss the tensor cores; its rows fail nothing."""
    for target in (name for name in TARGETS if name not in TRITON_TARGETS):
        rows = _rows(report, target)
        assert rows and not any(r["offered"] for r in rows)
        attention_half = [r for r in rows if r["kernel"].startswith("_attention") and r["dtype"] != "float32"]
        unusable = [r for r in attention_half if r["problems"]]
        assert len(unusable) == len(attention_half), [_label(r) for r in attention_half if not r["problems"]]
    assert failures(report) == []


@pytest.mark.parametrize("target", list(TARGETS))
def test_report_covers_every_kernel_shape_and_dtype(report, target):
    rows = _rows(report, target)
    defined = {
        name for path in KERNEL_FILES for name in re.findall(r"^def (_\w+_kernel)\(", path.read_text(), re.MULTILINE)
    }
    assert defined and {r["kernel"] for r in rows} == defined

    attention = defaultdict(set)
    for r in rows:
        if r["kernel"].startswith("_attention"):
            attention[r["kernel"]].add((r["shape"].split(": ")[1], r["dtype"], r["precision"]))
    variants = [("float16", "ieee"), ("bfloat16", "ieee"), ("float32", "ieee"), ("float32", "tf32")]
    expected = {(dims, dtype, precision) for dims in PACKAGE_HEAD_DIMS for dtype, precision in variants}
    assert attention.keys() == {"_attention_fwd_kernel", "_attention_bwd_dkdv_kernel", "_attention_bwd_dq_kernel"}
    assert all(found == expected for found in attention.values())

    shapes = layer_shapes(64, num_classes=1000)
    sn_shapes = {f"{shape[0]} x {torch.Size(shape[1:]).numel()}" for shape in shapes}
    sn_dtypes = ("float32", "float16", "bfloat16")
    for kernel in (
        "_sn_rows_kernel",
        "_sn_cols_kernel",
        "_sn_finish_kernel",
        "_sn_scale_kernel",
        "_sn_grad_dot_kernel",
        "_sn_grad_write_kernel",
    ):
        assert {(r["shape"], r["dtype"]) for r in rows if r["kernel"] == kernel} == {
            (s, d) for s in sn_shapes for d in sn_dtypes
        }
    grouped = f"{GROUPED_SHAPE} ({sum(shapes.values())})"
    for kernel in ("_sn_group_rows_kernel", "_sn_group_cols_kernel", "_sn_group_finish_kernel"):
        assert {(r["shape"], r["dtype"]) for r in rows if r["kernel"] == kernel} == {(grouped, d) for d in sn_dtypes}


@pytest.mark.parametrize("target", TRITON_TARGETS)
def test_autotuners_offer_a_choice_where_they_tune(report, target):
    """Pruning leaves several configs for each autotuned launch (one at the tf32 dK/dV extreme)."""
    offered = defaultdict(set)
    for r in _rows(report, target):
        offered[(r["kernel"], r["shape"], r["dtype"], r["precision"])].add(r["config"])
    for (kernel, shape, dtype, precision), configs in offered.items():
        if kernel in ("_attention_fwd_kernel", "_attention_bwd_dq_kernel", "_sn_rows_kernel", "_sn_cols_kernel"):
            assert len(configs) >= 2, (target, kernel, shape, dtype, precision)


def _verdicts(rows: list[dict]) -> list[tuple]:
    fields = ("target", "offered", "kernel", "shape", "dtype", "precision", "config", "dot")
    return sorted((*(r[f] for f in fields), tuple(r["problems"])) for r in rows)


def test_the_committed_report_of_this_triton_is_this_code(report):
    """bench/results/compile/ holds the report of each triton the check runs under; the README's table
    is made from them, so a config change must come with the reports it changes."""
    committed = REPORTS / f"triton-{report['triton']}.json"
    assert committed.is_file(), f"no committed report for triton {report['triton']}: write {committed}"
    saved = json.loads(committed.read_text())
    assert saved["targets"] == report["targets"] and not saved["quick"] and not saved["all_configs"]
    assert _verdicts(saved["rows"]) == _verdicts(report["rows"])


def test_readme_table_is_generated_from_the_committed_reports():
    reports = sorted((json.loads(p.read_text()) for p in REPORTS.glob("*.json")), key=lambda r: r["triton"])
    assert len(reports) >= 2  # triton 3.6, the oldest supported, and the newest
    assert generations_markdown(reports) in (ROOT / "README.md").read_text()


# ---- which generation's configs a GPU runs ------------------------------------------------------------


@pytest.mark.parametrize(
    "capability, shared, target",
    [
        ((7, 0), 98304, None),  # V100: older than the oldest checked generation
        ((7, 5), 65536, "sm_75"),
        ((8, 0), 166912, "sm_80"),
        ((8, 6), 101376, "sm_86"),
        ((8, 7), 166912, "sm_86"),  # Jetson Orin: sm_80's shared memory, but not an sm_80
        ((8, 9), 101376, "sm_89"),
        ((9, 0), 232448, "sm_90a"),
        ((10, 0), 232448, "sm_90a"),  # newer than the checks: the newest configs that fit
        ((12, 0), 101376, "sm_89"),  # an RTX 50xx: sm_90a's tiles need more shared memory than it has
    ],
)
def test_a_gpu_runs_the_newest_checked_generation_it_can(capability, shared, target):
    from tritonsagan.kernels._triton_support import generation_of

    generation = generation_of(capability, shared)
    assert (generation and generation.target) == target


def test_a_gpu_without_triton_kernels_takes_the_torch_paths_with_one_notice(monkeypatch, capsys):
    from types import SimpleNamespace

    from tritonsagan.kernels import _triton_support

    t4 = SimpleNamespace(major=7, minor=5, name="Tesla T4", shared_memory_per_block_optin=65536)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: t4)
    monkeypatch.setattr(_triton_support, "_generation_by_device", {})
    for _ in range(3):
        generation = _triton_support.device_generation(torch.device("cuda", 0))
        assert generation.target == "sm_75" and not generation.triton
    err = capsys.readouterr().err
    assert err == (
        "note: Tesla T4 (compute capability 7.5): the Triton kernels are not offered on this GPU generation; "
        "attention and spectral norm run their torch paths\n"
    )
