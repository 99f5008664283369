"""tritonsagan-bench end to end on CPU in --quick mode: the report's structure, never its timings."""

import json
import math
import subprocess
import sys

import torch

from tritonsagan.bench.summary import format_number, summary_markdown


def _bench(tmp_path, *args: str) -> dict:
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "tritonsagan.bench.cli", "--quick", "--device", "cpu", "--json", str(out), *args],
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_quick_report_has_every_section(tmp_path):
    report = _bench(tmp_path)
    assert report["quick"] is True
    assert report["environment"]["torch"] == torch.__version__
    assert _positive(report["floor"]["flops_per_s"]) and _positive(report["floor"]["bytes_per_s"])

    attention = report["attention"]
    assert {r["impl"] for r in attention} >= {"triton", "naive bmm+softmax", "torch chunked"}
    for row in attention:
        if row["impl"] == "triton":
            assert row["available"] is False  # no CUDA: marked, not failed
        else:
            assert row["available"] is True
            assert all(_positive(row[key]) for key in ("fwd_ms", "fwd_bwd_ms", "fwd_bwd_tflops", "fwd_bwd_pct_of_floor"))

    sn = report["spectral_norm"]
    assert {r["impl"] for r in sn["layers"] if r["available"]} == {"torch parametrization", "torch reference (ours)"}
    assert not any(r["available"] for r in sn["layers"] if r["impl"] == "triton fused")
    for impl, total in sn["totals"].items():
        expected = sum(r["fwd_bwd_ms"] * r["layers"] for r in sn["layers"] if r["impl"] == impl)
        assert math.isclose(total["fwd_bwd_ms"], expected, rel_tol=1e-9)

    train = {r["variant"][:3]: r for r in report["train_step"]}
    assert set(train) == {"(a)", "(b)", "(c)", "(d)"}
    assert train["(a)"]["backend"] == "naive" and train["(c)"]["compile"] is True
    for key in ("(a)", "(b)", "(c)"):
        assert train[key]["available"] and _positive(train[key]["images_per_s"])
    assert train["(d)"]["available"] is False and "CUDA" in train["(d)"]["reason"]

    table = summary_markdown([("cpu.json", report)]).splitlines()
    assert len(table) == 3 and table[2].startswith("| `cpu.json` |")
    assert f"{format_number(train['(a)']['images_per_s'])} / {format_number(train['(b)']['images_per_s'])}" in table[2]


def test_only_runs_one_section(tmp_path):
    report = _bench(tmp_path, "--only", "sn")
    assert "spectral_norm" in report
    assert "attention" not in report and "train_step" not in report
