"""tritonsagan-bench end to end on CPU in --quick mode: the report's structure, never its timings."""

import contextlib
import io
import json
import math
import subprocess
import sys

import pytest
import torch
from tritonsagan.bench import compile_check
from tritonsagan.bench import data as bench_data
from tritonsagan.bench.cells import number as format_number
from tritonsagan.bench.cli import main as bench_main
from tritonsagan.bench.cli import report_name
from tritonsagan.bench.summary import summary_markdown
from tritonsagan.bench.targets import evaluate_targets
from tritonsagan.bench.train_step import VARIANT_IDS


def _bench(tmp_path, *args: str) -> dict:
    """Run the bench with --json pointing at a folder; return the one report written there."""
    result = subprocess.run(
        [sys.executable, "-m", "tritonsagan.bench.cli", "--quick", "--device", "cpu", "--json", f"{tmp_path}/", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (written,) = tmp_path.glob("*.json")
    report = json.loads(written.read_text())
    header = result.stdout.splitlines()[0]  # a readable line, not the environment dict
    assert header.startswith(
        f"tritonsagan-bench on {report['environment']['device']} (cpu, --quick): torch {torch.__version__}"
    ), header
    assert (
        written.name == report_name(report)
        and written.name.startswith("cpu-")
        and report["environment"]["date"][:10] in written.name
    )
    return report


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


# The quick report's large image folder: enough links for a folder the loader's workers must carry,
# where the bench's own 200,000 would spend a minute making them.
TEST_FOLDER_SIZES = (100, 2_000)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> dict:
    """Every default section of `--quick` in this process, where it may be made cheaper: the compiled
    training-step variants compile with aot_eager (dynamo and AOTAutograd trace the whole step as
    inductor gets it, in seconds; inductor's own compile of G and D is test_models'), and the large
    folder is smaller. The command's own output and report name are checked by the tests that run it."""
    out = tmp_path_factory.mktemp("quick") / "report.json"
    compile_fn, compiled = torch.compile, []
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
        patch.setattr(
            torch, "compile", lambda fn, mode=None: compiled.append(fn) or compile_fn(fn, backend="aot_eager")
        )
        patch.setattr(bench_data, "FOLDER_SIZES", TEST_FOLDER_SIZES)
        try:
            assert bench_main(["--quick", "--device", "cpu", "--json", str(out)]) == 0
        finally:
            torch._dynamo.reset()
    assert compiled  # variants (c) and (e) went through torch.compile
    return json.loads(out.read_text())


def test_quick_report_has_the_environment_floor_and_attention(quick_report):
    report = quick_report
    assert report["quick"] is True
    assert report["environment"]["torch"] == torch.__version__
    assert _positive(report["floor"]["flops_per_s"]) and _positive(report["floor"]["bytes_per_s"])

    attention = report["attention"]
    assert {r["impl"] for r in attention} >= {"triton", "naive bmm+softmax", "torch chunked"}
    for row in attention:
        if row["impl"] in ("triton", "flex (compiled)"):
            assert row["available"] is False and row["reason"]  # no CUDA: marked, not failed
        else:
            assert row["available"] is True
            assert all(
                _positive(row[key]) for key in ("fwd_ms", "fwd_bwd_ms", "fwd_bwd_tflops", "fwd_bwd_pct_of_floor")
            )


def test_quick_report_has_spectral_norm_per_layer_and_in_total(quick_report):
    sn = quick_report["spectral_norm"]
    assert {r["impl"] for r in sn["layers"] if r["available"]} == {"torch parametrization", "torch path (ours)"}
    assert not any(r["available"] for r in sn["layers"] if r["impl"] == "triton fused")
    for impl, total in sn["totals"].items():
        expected = sum(r["fwd_bwd_ms"] * r["layers"] for r in sn["layers"] if r["impl"] == impl)
        assert math.isclose(total["fwd_bwd_ms"], expected, rel_tol=1e-9)


def test_quick_report_has_every_training_step_variant(quick_report):
    train = {r["id"]: r for r in quick_report["train_step"]}
    assert list(train) == VARIANT_IDS and {
        "a",
        "a'",
        "b",
        "c",
        "d",
        "e",
        "f",
        "d+grouped_sn",
        "d+max_autotune",
        "d+all",
    } <= set(train)
    assert (
        train["a"]["backend"] == "naive"
        and train["a'"]["backend"] == "naive"
        and train["a'"]["bf16"]
        and train["a'"]["tf32"]
    )
    assert train["c"]["compile"] is True and train["d+channels_last"]["tuning"] == {"channels_last": True}
    assert train["b"]["tuning"] == {} and train["b+channels_last"]["tuning"] == {"channels_last": True}
    assert train["e"]["diffaug"] == "color,translation,cutout" and all(train[k]["diffaug"] == "" for k in "abcd")
    for key in ("a", "b", "c", "e", "b+channels_last"):
        assert (
            train[key]["available"] and _positive(train[key]["images_per_s"]) and _positive(train[key]["pct_of_floor"])
        )
        assert train[key]["flops_per_image"] == pytest.approx(
            2.63e9, rel=0.01
        )  # ch 8: torch's FLOP counter, D step + G step
    for key in VARIANT_IDS:
        if train[key]["bf16"]:
            assert train[key]["available"] is False and "CUDA" in train[key]["reason"]


def test_quick_report_has_the_data_path_and_the_targets(quick_report):
    data = quick_report["data"]
    assert [r["files"] for r in data["folder"]] == list(TEST_FOLDER_SIZES) and all(
        _positive(r["ms_per_sample"]) for r in data["folder"]
    )
    assert _positive(data["packed"]["ms_per_sample"])
    assert {r["source"] for r in data["loader"]} == {"packed", f"folder ({TEST_FOLDER_SIZES[-1]} files)"} and all(
        _positive(r["images_per_s"]) for r in data["loader"]
    )

    targets = quick_report["targets"]
    gpu_targets, data_targets = targets[:-2], targets[-2:]
    assert len(gpu_targets) == 12 and all(
        t["status"] == "not measured" and t["met"] is None for t in gpu_targets
    )  # no Triton, no bf16
    assert all(
        t["target"].startswith("data:") and t["measured"] is not None and t["met"] in (True, False)
        for t in data_targets
    )


def test_quick_report_makes_a_summary_row(quick_report):
    report, train = quick_report, {r["id"]: r for r in quick_report["train_step"]}
    table = summary_markdown(
        [("cpu.json", report), ("learning.json", {"environment": report["environment"], "learning": {}})]
    ).splitlines()
    assert len(table) == 3 and table[2].startswith("| `cpu.json` |")  # a report without timed sections has no row
    assert (
        f"{format_number(train['a']['images_per_s'])} / n/a / {format_number(train['b']['images_per_s'])}" in table[2]
    )


def test_sections_and_variants_merge_into_one_report(tmp_path):
    """One report from several commands: --only, --variants and --merge."""
    first = _bench(tmp_path, "--only", "train", "--variants", "d,a")  # (d) is a row without a CPU path, at no cost
    assert "train_step" in first and "spectral_norm" not in first
    merged = _bench(tmp_path, "--only", "sn,train", "--variants", "a'", "--merge")  # a section and a row added
    assert merged["train_step"][::2] == first["train_step"] and [r["id"] for r in merged["train_step"]] == [
        "a",
        "a'",
        "d",
    ]
    assert "spectral_norm" in merged and len(merged["targets"]) == 14


def test_unknown_section_or_variant_is_a_clear_error(capsys):
    assert bench_main(["--only", "attention,gpu", "--device", "cpu"]) == 1
    assert "error: --only: unknown section gpu" in capsys.readouterr().err
    assert bench_main(["--variants", "d,x", "--device", "cpu"]) == 1
    assert "error: --variants: unknown variant 'x'" in capsys.readouterr().err


def test_only_runs_one_section(tmp_path):
    report = _bench(tmp_path, "--only", "sn")
    assert "spectral_norm" in report
    assert "attention" not in report and "train_step" not in report


def _attention_row(shape: str, batch: int, impl: str, ms: float, pct: float = 60.0, peak: int | None = None) -> dict:
    return {
        "shape": shape,
        "batch": batch,
        "impl": impl,
        "available": True,
        "fwd_bwd_ms": ms,
        "fwd_bwd_pct_of_floor": pct,
        "peak_extra_bytes": peak,
    }


def test_targets_met_missed_and_by_how_much():
    rows = []
    for shape in ("G 32x32", "D 32x32"):
        rows += [
            _attention_row(shape, 16, "triton", 10.0),  # below batch 64: ignored
            _attention_row(shape, 64, "triton", 1.0),
            _attention_row(shape, 64, "sdpa cudnn", 2.5),
            _attention_row(shape, 64, "sdpa mem-efficient", 3.0),
            _attention_row(shape, 64, "naive bmm+softmax", 3.0),
            _attention_row(shape, 128, "triton", 2.0, pct=40.0),
            _attention_row(shape, 128, "sdpa cudnn", 5.0),
            _attention_row(shape, 128, "naive bmm+softmax", 9.0),
        ]
    rows += [
        _attention_row("D 32x32", 256, "triton", 1.0, peak=100),
        _attention_row("G 64x64", 256, "triton", 1.0, peak=420),
    ]
    rows += [
        _attention_row("G 32x32", 64, "flex (compiled)", 1.2),
        _attention_row("G 32x32", 128, "flex (compiled)", 3.0),
    ]
    report = {
        "attention": rows,
        "spectral_norm": {
            "totals": {"triton fused": {"fwd_bwd_ms": 4.0}, "torch parametrization": {"fwd_bwd_ms": 6.0}}
        },
        "train_step": [
            {"id": "a", "variant": "(a) ref", "available": True, "images_per_s": 100.0, "ch": 64, "batch": 256},
            {"id": "a'", "variant": "(a') ref bf16", "available": True, "images_per_s": 1000.0, "ch": 64, "batch": 256},
            {"id": "d", "variant": "(d) bf16", "available": True, "images_per_s": 1800.0, "ch": 64, "batch": 256},
        ],
    }
    by_name = {t["target"]: t for t in evaluate_targets(report)}
    sdpa = by_name["attention G 32x32: speed-up over the best SDPA backend"]
    assert sdpa["measured"] == 2.5 and sdpa["met"] is True  # worst of batch 64 (2.5x) and 128 (2.5x)
    naive = by_name["attention D 32x32: speed-up over bmm + softmax"]
    assert naive["measured"] == 3.0 and naive["status"] == "missed by 1.33x"
    floor = by_name["attention G 32x32: fraction of the device floor"]
    assert floor["measured"] == 0.4 and floor["status"] == "missed by 1.25x"
    memory = by_name["attention extra memory: growth for 4x N (linear ~4, quadratic ~16)"]
    assert memory["measured"] == 4.2 and memory["met"] is True
    sn = by_name["spectral norm: fused speed-up over torch's parametrization"]
    assert sn["measured"] == 1.5 and sn["status"] == "missed by 1.33x"
    flex = by_name["attention G 32x32: speed-up over FlexAttention (compiled)"]
    assert flex["measured"] == 1.2 and flex["status"] == "missed by 1.08x"  # worst of batch 64 (1.2x) and 128 (1.5x)
    assert by_name["attention D 32x32: speed-up over FlexAttention (compiled)"]["status"] == "not measured"
    train = by_name["training step: compiled bf16 (d) over the port-style reference at equal precision (a')"]
    assert train["measured"] == 1.8 and train["met"] is True
    speed = by_name["training step: compiled bf16 (d) images/s at ch 64, batch 256"]
    assert speed["measured"] == 1800.0 and speed["status"] == "missed by 1.11x"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
@pytest.mark.parametrize(
    "device, message", [("cuda", "CUDA is not available"), ("tpu:7", "not a device"), ("meta", "runs on cpu or cuda")]
)
def test_bad_device_is_a_clear_error(device, message, capsys):
    assert bench_main(["--device", device]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --device {device}") and message in err and "Traceback" not in err


def _compile_row(target: str, dot: str, problems: list[str], offered: bool = True) -> dict:
    return {
        "target": target,
        "offered": offered,
        "op": "attention forward",
        "kernel": "_attention_fwd_kernel",
        "shape": "G ch 64: d_qk 32, d_v 128",
        "dtype": "bfloat16",
        "precision": "ieee",
        "config": "BLOCK_M 64, BLOCK_N 64, warps 4, stages 2",
        "registers": 168,
        "spill_bytes": 0,
        "shared_bytes": 45056,
        "dot": dot,
        "problems": problems,
    }


def _fake_compile_report(rows: list[dict]) -> dict:
    targets = {
        name: {
            "capability": "x",
            "shared_limit_bytes": 1,
            "gpus": f"GPUs of {name}",
            "tensor_dot": "mma",
            "triton_kernels": True,
        }
        for name in {row["target"] for row in rows}
    }
    return {"triton": "3.x", "targets": targets, "all_configs": False, "quick": False, "rows": rows}


def test_compile_section_is_printed_and_saved_for_the_targets_asked(tmp_path, monkeypatch, capsys):
    """--only compile --targets: the compile report (faked here; tests/test_compile_check.py builds the real one)."""
    asked = []
    fake = _fake_compile_report(
        [_compile_row("sm_90a", "wgmma", []), _compile_row("sm_75", "fma", ["spills"], offered=False)]
    )
    monkeypatch.setattr(compile_check, "compile_report", lambda targets: asked.append(targets) or fake)
    out = tmp_path / "report.json"
    assert bench_main(["--only", "compile", "--targets", "sm_90a,sm_75", "--device", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert asked == [["sm_90a", "sm_75"]] and report["compile"] == fake and "attention" not in report
    printed = capsys.readouterr().out
    assert "Compile check" in printed and "_attention_fwd_kernel" in printed and "wgmma" in printed
    assert "GPUs of sm_90a" in printed and "not offered (torch paths); 1 of 1 unusable" in printed


def test_compile_check_exits_1_naming_each_offered_config_that_fails(tmp_path, monkeypatch, capsys):
    fake = _fake_compile_report(
        [_compile_row("sm_86", "mma", ["spills 132 B/thread"]), _compile_row("sm_80", "mma", [])]
    )
    monkeypatch.setattr(compile_check, "compile_report", lambda targets: fake)
    out = tmp_path / "report.json"
    assert bench_main(["--only", "compile", "--device", "cpu", "--json", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the compile check failed for 1 offered config(s)") and f"(report {out})" in err
    assert "sm_86 _attention_fwd_kernel [G ch 64: d_qk 32, d_v 128, bfloat16] BLOCK_M 64" in err and "spills 132" in err
    assert json.loads(out.read_text())["compile"] == fake  # the report is written all the same


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--only", "compile", "--targets", "sm_70"], "unknown target sm_70; the checked targets: sm_75, sm_80"),
        (["--targets", "sm_80"], "--targets chooses what --only compile compiles for"),
    ],
)
def test_compile_targets_are_checked(flags, message, capsys):
    code = None
    try:
        code = bench_main([*flags, "--device", "cpu"])
    except SystemExit as exit:  # argparse's own error
        code = exit.code
    assert code in (1, 2) and message in capsys.readouterr().err


def test_learning_section_measures_each_step_and_draws_its_curves(tmp_path, monkeypatch):
    """--only learning --quick: a row per measured step with photo_match and the fixed pattern of G and
    G_ema, KID on the named network, D's logits, losses and seconds; the grids; the curves beside a
    peer's figures."""
    from helpers import stand_in_network
    from tritonsagan.bench.learning import main as learning_main

    from tritonsagan.feature_network import FID_WEIGHTS_ENV

    monkeypatch.setenv(FID_WEIGHTS_ENV, str(stand_in_network(tmp_path / "net.pt")))
    report = _bench(tmp_path / "report", "--only", "learning", "--samples", str(tmp_path / "grids"))
    learning = report["learning"]
    assert set(report) == {"environment", "quick", "learning"}
    assert (
        learning["recipe"]["image_size"] == 64
        and learning["recipe"]["conditional"]
        and learning["network"].startswith("unknown TorchScript")
    )
    assert 0.9 <= learning["fresh_crops_photo_match"] <= 1 and math.isfinite(learning["kid_real_vs_real"])
    assert 0 <= learning["fixed_pattern_real"] < 0.05
    assert [row["step"] for row in learning["rows"]] == [2, 4]
    for row in learning["rows"]:
        assert all(0 <= row[key] <= 1 for key in ("photo_match_g", "photo_match_g_ema"))
        assert all(math.isfinite(row[key]) and row[key] >= 0 for key in ("fixed_pattern_g", "fixed_pattern_g_ema"))
        assert all(math.isfinite(row[key]) for key in ("kid", "d_real", "d_fake", "loss_d", "loss_g")) and _positive(
            row["seconds"]
        )
    assert learning["rows"][1]["seconds"] > learning["rows"][0]["seconds"]
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == ["step_0000002_ema.png", "step_0000004_ema.png"]

    peer, other_seed = tmp_path / "peer.json", tmp_path / "peer_seed1.json"
    peer.write_text(
        json.dumps(
            {
                "name": "a peer",
                "rows": [{"step": 2, "photo_match_g": 0.5, "fixed_pattern_g": 0.4}, {"step": 4, "photo_match_g": 0.6}],
            }
        )
    )
    other_seed.write_text(
        json.dumps({"name": "a peer", "settings": {"seed": 1}, "rows": [{"step": 2, "photo_match_g": 0.4}]})
    )
    (written,) = (tmp_path / "report").glob("*.json")
    assert (
        learning_main(
            [str(written), "--peer", str(peer), "--peer", str(other_seed), "--out", str(tmp_path / "learning.png")]
        )
        == 0
    )
    assert (tmp_path / "learning.png").stat().st_size > 10_000
    assert (
        learning_main([str(written), *["--peer", str(peer)] * 5, "--out", str(tmp_path / "five.png")]) == 2
    )  # at most 4


def test_the_learning_table_has_a_row_per_run_with_dashes_where_a_figure_is_missing():
    from tritonsagan.bench.learning import comparison_markdown

    ours = {
        "learning": {
            "recipe": {},
            "fixed_pattern_real": 0.012,
            "rows": [
                {"step": 500, "photo_match_g": 0.5, "photo_match_g_ema": 0.25},
                {
                    "step": 1000,
                    "photo_match_g": 0.75,
                    "photo_match_g_ema": 0.5,
                    "fixed_pattern_g": 0.5,
                    "fixed_pattern_g_ema": 0.25,
                },
            ],
        }
    }
    peer = {"name": "a peer", "rows": [{"step": 1000, "photo_match_g": 0.875, "fixed_pattern_g": 0.375}]}
    header, rule, *rows = comparison_markdown(
        [("ours.json", ours), ("timings.json", {"attention": []}), ("peer.json", peer)]
    ).splitlines()
    assert "fixed pattern G / G_ema at 1000 (real crops 0.01)" in header and rule.count("|") == header.count("|")
    assert rows == [
        "| `ours.json` | none | 0.50 / 0.75 / - | 0.25 / 0.50 / - | 0.50 / 0.25 | - |",
        "| `peer.json` | (peer) | - / 0.88 / - | - / - / - | 0.38 / - | - |",
    ]


def test_the_readmes_learning_table_is_generated_from_the_committed_reports():
    """The README's learning table is what `python -m tritonsagan.bench.learning --table` prints for
    the committed reports: the bench's learning reports, the one-change runs, then the peer's."""
    from pathlib import Path

    from tritonsagan.bench.learning import comparison_markdown

    root = Path(__file__).parent.parent
    results = root / "bench" / "results"
    paths = (
        sorted(results.glob("*.json"))
        + sorted((results / "learning").glob("*.json"))
        + sorted((results / "peers").glob("*.json"))
    )
    table = comparison_markdown([(p.name, json.loads(p.read_text())) for p in paths])
    assert table in (root / "README.md").read_text()
