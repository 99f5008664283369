"""The GPU run's commands rehearsed on the CPU at tiny sizes: each writes its logs and JSON and passes."""

import json
import os

import pytest
import torch
from helpers import stand_in_network

import tritonsagan.gpu_run as gpu_run
from tritonsagan.gpu_run import (
    BENCH_PARTS,
    MAX_WEIGHTS_BYTES,
    PRETRAINED_NAME,
    RETURN_MAX_FILE_BYTES,
    main,
    unreturnable,
)
from tritonsagan.run_directory import load_generator
from tritonsagan.shipped import SHIPPED_FILES
from tritonsagan.weights_io import load_safetensors


def returned(out):
    """The files of a step's output folder, as they would come back from the GPU machine."""
    assert unreturnable(out) == []
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_check_rehearsal(tmp_path):
    assert main(["check", "--rehearse", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "check.json").read_text())
    assert (
        summary["pytest_gpu"]["exit_code"] == 0 and summary["pytest_gpu"]["tests"] > 0
    )  # collected; skipped without CUDA
    assert summary["hopper"].get("unavailable") or (
        summary["hopper"]["compiled"] > 0 and summary["hopper"]["problems"] == []
    )
    train = summary["train"]
    assert train["exit_code"] == 0 and train["steps"] == 4 and train["losses_finite"] and train["images_per_s"] > 0
    assert train["grids"] == ["step_0000002_ema.png", "step_0000004_ema.png"] and train["grid_change"] > 0
    assert "step 4/4" in (tmp_path / "train-check.log").read_text()
    assert returned(tmp_path) == [
        "check.json",
        "hopper.json",
        "pytest-gpu.log",
        "pytest-gpu.xml",
        "train-check.log",
        "train-check_step_0000002_ema.png",
        "train-check_step_0000004_ema.png",
    ]


def test_bench_rehearsal_merges_parts_into_one_report(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["bench", "--part", "switches", "--rehearse", "--out", str(first)]) == 0
    (report,) = first.glob("cpu-*.json")
    assert main(["bench", "--part", "compile", "--rehearse", "--out", str(second), "--merge-with", str(report)]) == 0
    merged = json.loads((second / report.name).read_text())
    ids = [r["id"] for r in merged["train_step"]]
    assert ids[0] == "d+channels_last" and ids[-1] == "d+all" and len(ids) == 9
    assert set(BENCH_PARTS) == {"kernels", "train", "switches", "compile"}


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # the stand-in FID network
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_pretrained_rehearsal_makes_the_folder_to_ship(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_run, "CARRIED_FID", tmp_path / "carry" / gpu_run.CARRIED_FID.name)
    assert (
        main(
            ["carry", "--out", str(tmp_path / "carry"), "--fid-weights", str(stand_in_network(tmp_path / "standin.pt"))]
        )
        == 0
    )
    assert {p.dtype for p in torch.jit.load(gpu_run.CARRIED_FID).parameters()} == {torch.float16}
    out, run = tmp_path / "out", tmp_path / "run"
    for _ in range(2):  # the second command finds the run complete
        assert main(["pretrained", "--rehearse", "--out", str(out), "--run-dir", str(run)]) == 0
    assert returned(out) == sorted(
        [*(f"{PRETRAINED_NAME}/{name}" for name in SHIPPED_FILES), "metrics.jsonl", "pretrained.json", "pretrained.log"]
    )
    summary = json.loads((out / "pretrained.json").read_text())
    card = summary["card"]
    assert (
        summary["run"]["steps"] == 6
        and summary["run"]["losses_finite"]
        and card["step"] == 6
        and 0 < card["weights_bytes"] <= MAX_WEIGHTS_BYTES
    )
    assert summary["run"]["last_fid"]["step"] == 6 and card["kid"]["n"] == gpu_run.REHEARSAL_KID_N
    assert (
        card["photo_match"]["images"] == 8 * 17
        and len(card["photo_match"]["per_photo"]) == 17
        and len(card["photo_variety"]["per_photo"]) == 17
    )
    G = load_generator(out / PRETRAINED_NAME)
    assert G.config.num_classes == 17 and G.config.ch == 8
    tensors, _ = load_safetensors(out / PRETRAINED_NAME / "model.safetensors")
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {
        torch.float16
    } and G.conv_out.weight.dtype == torch.float32
    readme = (out / PRETRAINED_NAME / "README.md").read_text()
    assert "6 steps at batch 4 (24 images)" in readme and f"KID | {card['kid']['kid']:.4f}" in readme
    assert f"{card['photo_match']['accuracy']:.0%} of 136 generated images" in readme
    assert (
        f"feature network unknown TorchScript network {gpu_run.CARRIED_FID.name}" in readme
    )  # pretrained finds what carry wrote


def test_unreturnable_names_what_would_not_come_back(tmp_path):
    for i in range(8):
        (tmp_path / f"f{i}.json").write_text("{}")
    assert unreturnable(tmp_path) == []
    with open(tmp_path / "big.bin", "wb") as big:
        big.truncate(RETURN_MAX_FILE_BYTES + 1)
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "deep.txt").write_text("")
    (tmp_path / "a" / "odd name.txt").write_text("")
    os.symlink(tmp_path / "f0.json", tmp_path / "link")
    problems = unreturnable(tmp_path)
    assert problems[0] == "12 files, more than 8"
    for expected in (
        "big.bin: over 16 MiB",
        "a/b/c/deep.txt: more than 2 folders down",
        "a/odd name.txt: a name with",
        "link: not a plain file",
    ):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_a_step_leaving_too_much_fails_naming_it(tmp_path, monkeypatch, capsys):
    def bench_leaving_nine_files(out, *args):
        for i in range(9):
            (out / f"part{i}.json").write_text("{}")
        return True

    monkeypatch.setattr(gpu_run, "bench", bench_leaving_nine_files)
    assert main(["bench", "--rehearse", "--out", str(tmp_path)]) == 1
    assert "cannot come back from the GPU machine: 9 files, more than 8" in capsys.readouterr().err


def test_bad_merge_report_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "--rehearse", "--out", str(tmp_path), "--merge-with", str(tmp_path / "none.json")]) == 1
    assert "error: --merge-with" in capsys.readouterr().err
