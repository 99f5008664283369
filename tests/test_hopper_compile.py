"""Every Triton kernel of kernels/ compiled for Hopper (sm_90a) without a GPU, for every autotune config
it would offer at the package's shapes: no spills, within shared memory, half-precision dots on wgmma.

The interpreter never shows register spills, shared-memory overflow or dots that fall back from the
tensor cores; this compile does. The report is built once per session in a fresh process (see
tritonsagan.bench.hopper); triton's cache makes later runs fast.
"""

import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from tritonsagan.bench.hopper import GROUPED_SHAPE, SM90_SHARED_LIMIT, HopperCheckUnavailable, compile_report
from tritonsagan.bench.spectral_norm import layer_shapes

KERNEL_FILES = sorted((Path(__file__).parents[1] / "kernels").glob("*_kernels.py"))
PACKAGE_HEAD_DIMS = {
    "d_qk 8, d_v 32",
    "d_qk 16, d_v 64",
    "d_qk 32, d_v 128",
    "d_qk 64, d_v 256",
}  # G and D at ch 32, 64, 128


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    try:
        report = compile_report()
    except HopperCheckUnavailable as err:
        pytest.skip(f"this triton cannot compile for NVIDIA GPUs: {err}")
    assert report["target"] == "cuda sm_90a" and report["shared_limit_bytes"] == SM90_SHARED_LIMIT
    return report["rows"]


def _label(row: dict) -> str:
    return f"{row['kernel']} [{row['shape']}, {row['dtype']}, {row['precision']}] {row['config']}"


def test_every_offered_config_compiles_without_spills_within_shared_memory(rows):
    bad = [f"{_label(r)}: {'; '.join(r['problems'])}" for r in rows if r["problems"]]
    assert not bad, "configs the autotuner would try that are unusable on an H100:\n" + "\n".join(bad)
    for row in rows:
        assert row["spill_bytes"] == 0 and 0 <= row["shared_bytes"] <= SM90_SHARED_LIMIT and row["registers"] <= 255, (
            _label(row)
        )


def test_half_precision_dots_are_wgmma(rows):
    half = [r for r in rows if r["dtype"] in ("float16", "bfloat16") and r["kernel"].startswith("_attention")]
    assert half and all(r["dot"] == "wgmma" for r in half), [_label(r) for r in half if r["dot"] != "wgmma"]
    assert all(r["dot"] is None for r in rows if r["kernel"].startswith("_sn"))  # no dots in the SN kernels


def test_report_covers_every_kernel_shape_and_dtype(rows):
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
    for kernel in (
        "_sn_rows_kernel",
        "_sn_cols_kernel",
        "_sn_finish_kernel",
        "_sn_scale_kernel",
        "_sn_grad_dot_kernel",
        "_sn_grad_write_kernel",
    ):
        assert {(r["shape"], r["dtype"]) for r in rows if r["kernel"] == kernel} == {
            (s, d) for s in sn_shapes for d in ("float32", "bfloat16")
        }
    grouped = f"{GROUPED_SHAPE} ({sum(shapes.values())})"
    for kernel in ("_sn_group_rows_kernel", "_sn_group_cols_kernel", "_sn_group_finish_kernel"):
        assert {(r["shape"], r["dtype"]) for r in rows if r["kernel"] == kernel} == {
            (grouped, d) for d in ("float32", "bfloat16")
        }


def test_autotuners_offer_a_choice_where_they_tune(rows):
    """Pruning leaves several configs for each autotuned launch (one at the tf32 dK/dV extreme)."""
    offered = defaultdict(set)
    for r in rows:
        offered[(r["kernel"], r["shape"], r["dtype"], r["precision"])].add(r["config"])
    for (kernel, shape, dtype, precision), configs in offered.items():
        if kernel in ("_attention_fwd_kernel", "_attention_bwd_dq_kernel", "_sn_rows_kernel", "_sn_cols_kernel"):
            assert len(configs) >= 2, (kernel, shape, dtype, precision)
