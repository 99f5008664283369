"""Every command: one error path (`error: ...` on stderr, exit 1, no traceback), --device auto, clean edges.

Each case is tried as a new user would; before, each ended in a traceback.
"""

import errno
import json
import os
import stat
import sys

import pytest
import torch
from helpers import write_image
from tritonsagan.bench.cli import main as bench_main
from tritonsagan.models import Discriminator, Generator

import tritonsagan.atomic_write as atomic_write
from tritonsagan.checkpoint import list_checkpoints
from tritonsagan.curves import main as curves_main
from tritonsagan.data import DataError
from tritonsagan.data.folder import ImageFolderStream
from tritonsagan.evaluate import main as eval_main
from tritonsagan.generate import main as generate_main
from tritonsagan.train import TrainConfig, train
from tritonsagan.train import main as train_main

TINY = ["--ch", "8", "--batch-size", "4", "--workers", "0", "--num-samples", "4", "--log-every", "2", "--no-compile"]
COMMANDS = {
    "train": train_main,
    "generate": generate_main,
    "eval": eval_main,
    "bench": bench_main,
    "curves": curves_main,
}


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message for a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "generate", "eval", "bench"])
def test_device_cuda_without_cuda_is_one_line(command, tmp_path, capsys):
    args = {
        "train": ["--out", str(tmp_path)],
        "generate": ["--weights", str(tmp_path), "--out", "x.png"],
        "eval": ["--weights", str(tmp_path)],
        "bench": [],
    }
    assert COMMANDS[command]([*args[command], "--device", "cuda"]) == 1
    err = _error(capsys)
    assert err.startswith("error: --device cuda: CUDA is not available") and "--device cpu" in err


@pytest.mark.parametrize("command", ["train", "generate", "eval", "bench"])
def test_device_defaults_to_auto_everywhere(command, capsys):
    with pytest.raises(SystemExit):
        COMMANDS[command](["--help"])
    device_help = " ".join(
        capsys.readouterr().out.rsplit("--device DEVICE", 1)[1].split("  --", 1)[0].split()
    )  # its help entry
    assert "(default: auto)" in device_help


@pytest.mark.parametrize("ch, step", [(7, 4), (6, 4), (2, 4)])
def test_train_width_that_cannot_split_into_attention_heads(ch, step, tmp_path, capsys):
    assert train_main(["--out", str(tmp_path / "run"), "--ch", str(ch), "--steps", "1"]) == 1
    err = _error(capsys)
    assert err.startswith("error: invalid config:") and f"ch={ch}" in err and f"multiple of {step}" in err
    assert not (tmp_path / "run").exists()  # refused before anything was read or written


@pytest.mark.parametrize(
    "values, message",
    [
        ({"compile": "yes"}, "config key 'compile' must be bool | None, got 'yes'"),
        ({"steps": "ten"}, "config key 'steps' must be int, got 'ten'"),
    ],
)
def test_config_file_value_of_the_wrong_type(values, message, tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps(values))
    assert train_main(["--config", str(config), "--out", str(tmp_path / "run")]) == 1
    assert _error(capsys) == f"error: {message}\n"


def test_model_widths_are_checked_up_front():
    with pytest.raises(
        ValueError,
        match=r"Discriminator: ch=6 .* 12 channels, which must be a multiple of 8; use a ch that is a multiple of 4",
    ):
        Discriminator(ch=6)
    with pytest.raises(ValueError, match=r"Generator: ch=3 gives the attention block at 64x64 6 channels"):
        Generator(ch=3, attn_res=64)
    Generator(ch=2)  # G's attention at 32x32 has 4 * ch = 8 channels: fine
    Generator(ch=3, attn_res=0)  # no attention, no constraint


def test_full_disk_while_checkpointing_names_the_file_and_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert train_main(["--out", str(run), "--steps", "2", "--save-every", "2", *TINY]) == 0
    real_fsync = os.fsync

    def fsync_on_a_full_disk(fd):  # the disk fills up while step 4's checkpoint is written
        if os.path.basename(os.path.realpath(f"/proc/self/fd/{fd}")).startswith(".step_0000004.safetensors."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(atomic_write.os, "fsync", fsync_on_a_full_disk)
    capsys.readouterr()
    assert train_main(["--out", str(run), "--steps", "4", "--save-every", "2", *TINY]) == 1
    err = _error(capsys)
    assert err.startswith("error: could not write the checkpoint of step 4: [Errno 28] No space left on device")
    assert (
        "step_0000004.safetensors" in err
        and f"last good checkpoint is {run / 'checkpoints' / 'step_0000002.safetensors'}" in err
    )
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2]
    assert not list(run.rglob("*.tmp"))  # nothing half-written left behind


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_run_files_get_the_umask_permissions(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        train(
            TrainConfig(out=str(tmp_path / "run"), steps=1, ch=8, batch_size=2, workers=0, num_samples=2, compile=False)
        )
    finally:
        os.umask(old)
    files = [
        tmp_path / "run" / "config.json",
        tmp_path / "run" / "checkpoints" / "step_0000001.safetensors",
        tmp_path / "run" / "generator" / "model.safetensors",
        tmp_path / "run" / "samples" / "step_0000001.png",
    ]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_class_folder_without_a_readable_image_is_refused_before_training(tmp_path, capsys):
    root = tmp_path / "data"
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
        write_image(root / name / "a.png", 0, size=(48, 40))
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    (root / "broken").mkdir()
    (root / "broken" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(
        DataError,
        match=r"no usable image in 2 class folders: broken \(1 image file, none usable\), empty \(no image files\)",
    ):
        ImageFolderStream(root, seed=0, conditional=True)
    assert (
        train_main(["--data", str(root), "--conditional", "--out", str(tmp_path / "run"), "--steps", "1", *TINY]) == 1
    )
    assert "no usable image in 2 class folders" in _error(capsys)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_curves_command_and_its_errors(tmp_path, capsys):
    assert curves_main([str(tmp_path / "nothing"), "--out", str(tmp_path / "c.png")]) == 1
    assert _error(capsys).startswith("error: no metrics.jsonl at")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "loss_d": 1.0}) + "\n{not json\n" + json.dumps({"step": 2}) + "\n"
    )
    assert curves_main([str(run), "--out", str(tmp_path / "c.png")]) == 1
    assert "line 2: not JSON" in _error(capsys)


def test_traceback_on_request(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITONSAGAN_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        generate_main(["--weights", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")])


@pytest.mark.parametrize("command", ["generate", "curves"])
def test_ctrl_c_is_one_line_and_exit_130(command, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    module = sys.modules[COMMANDS[command].__module__]
    monkeypatch.setattr(module, {"generate": "run_generation", "curves": "_run"}[command], interrupted)
    assert COMMANDS[command](["--weights", "w", "--out", "x.png"] if command == "generate" else ["run"]) == 130
    assert capsys.readouterr().err == "error: interrupted (Ctrl-C)\n"


@pytest.mark.parametrize("module", ["train", "generate", "evaluate", "curves", "data.packed_writer", "bench.cli"])
def test_every_flag_is_explained_and_its_default_said_once(module):
    import argparse
    import importlib

    parser = importlib.import_module(f"tritonsagan.{module}").build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        text = parser._get_formatter()._expand_help(action) if action.help else ""
        assert len(text) > 10, f"{name} has no help"
        assert text.count("(default:") <= 1 and "(default: None)" not in text and "(default: )" not in text, (
            f"{name}: {text}"
        )
