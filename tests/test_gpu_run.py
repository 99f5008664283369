"""The GPU run's commands rehearsed on the CPU at tiny sizes: each writes its logs and JSON and passes."""

import json

from PIL import Image

from tritonsagan.gpu_run import BENCH_PARTS, MAX_WEIGHTS_BYTES, PRETRAINED_NAME, main
from tritonsagan.models import Generator


def test_check_rehearsal(tmp_path):
    assert main(["check", "--rehearse", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "check.json").read_text())
    assert summary["pytest_gpu"]["exit_code"] == 0 and summary["pytest_gpu"]["tests"] > 0  # collected; skipped without CUDA
    assert summary["hopper"].get("unavailable") or (summary["hopper"]["compiled"] > 0 and summary["hopper"]["problems"] == [])
    train = summary["train"]
    assert train["exit_code"] == 0 and train["steps"] == 4 and train["losses_finite"] and train["images_per_s"] > 0
    assert train["grids"] == ["step_0000002_ema.png", "step_0000004_ema.png"] and train["grid_change"] > 0
    assert "step 4/4" in (tmp_path / "train-check.log").read_text()


def test_bench_rehearsal_merges_parts_into_one_report(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["bench", "--part", "switches", "--rehearse", "--out", str(first)]) == 0
    (report,) = first.glob("cpu-*.json")
    assert main(["bench", "--part", "compile", "--rehearse", "--out", str(second), "--merge-with", str(report)]) == 0
    merged = json.loads((second / report.name).read_text())
    ids = [r["id"] for r in merged["train_step"]]
    assert ids[0] == "d+channels_last" and ids[-1] == "d+all" and len(ids) == 9
    assert set(BENCH_PARTS) == {"kernels", "train", "switches", "compile"}


def test_pretrained_rehearsal_exports_float16_weights(tmp_path):
    assert main(["pretrained", "--rehearse", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "pretrained.json").read_text())
    assert summary["run"]["steps"] == 6 and summary["run"]["losses_finite"] and 0 < summary["weights_bytes"] <= MAX_WEIGHTS_BYTES
    G = Generator.from_pretrained(tmp_path / PRETRAINED_NAME)
    assert G.config.num_classes == 17 and G.config.ch == 8
    assert Image.open(tmp_path / "step_0000006_ema.png").size == (262, 262)
    assert (tmp_path / "metrics.jsonl").is_file()


def test_bad_merge_report_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "--rehearse", "--out", str(tmp_path), "--merge-with", str(tmp_path / "none.json")]) == 1
    assert "error: --merge-with" in capsys.readouterr().err
