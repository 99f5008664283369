"""tritonsagan-train end to end on CPU at a tiny width: outputs, exact resume, crashes, bad data, DDP."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import cli_flags, final_weights, tiny_config, tiny_step, write_image
from PIL import Image
from safetensors.torch import load_file
from tritonsagan.models import Discriminator, Generator

import tritonsagan.step as step_module
from tritonsagan.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from tritonsagan.step import MODE_SEEKING_EPS, mode_seeking_penalty
from tritonsagan.train import TrainingDiverged, main, train


def test_end_to_end_run_writes_every_output(tmp_path, capsys):
    run = tmp_path / "run"
    flags = cli_flags()
    flags.remove("--no-compile")  # left to the device: config.json says what it decided
    assert main(["--out", str(run), "--steps", "4", "--conditional", *flags]) == 0

    # Off a terminal (pytest captures stdout): one line at the start, then a plain line at each log step.
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        f"training on cpu ({torch.get_num_threads()} threads): 128x128, ch 8, batch 4, steps 0 -> 4; data builtin (17 images, 17 classes); "
        f"compile off, precision fp32, DiffAugment color,translation,cutout; outputs in {run}/ (samples/, generator/, curves.png, metrics.jsonl)"
    )
    progress = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["2/4", "4/4"] and all(
        " left" in line and "img/s" in line for line in progress
    )

    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 4 and config["conditional"] and config["lr_d"] == 4e-4
    # What was left to the device and the data is recorded as decided.
    assert (
        config["device"] == "cpu"
        and config["compile"] is False
        and config["channels_last"] is True
        and config["precision"] == "fp32"
        and config["diffaug"] == "color,translation,cutout"
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        for key in ("loss_d", "loss_g", "d_real", "d_fake", "images_per_s", "lr_g", "lr_d"):
            assert np.isfinite(record[key]), key
        assert record["skipped_images"] == 0  # the built-in photos never skip a file
        assert len(record["gamma_g"]) == 1 and len(record["gamma_d"]) == 1
    for step in (2, 4):
        for suffix in ("", "_ema"):
            grid = Image.open(run / "samples" / f"step_{step:07d}{suffix}.png")
            assert grid.size == (2 * 130 + 2, 2 * 130 + 2)  # 4 samples, 2x2, padding 2
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2, 4]

    # The run directory reloads: generation weights, and a checkpoint into fresh models.
    G_ema = Generator.from_pretrained(run / "generator")
    assert G_ema.config.num_classes == 17 and G_ema.config.ch == 8
    G, D = Generator(ch=8, num_classes=17), Discriminator(ch=8, num_classes=17)
    step, rng, meta = load_checkpoint(latest_checkpoint(run / "checkpoints"), {"G": G, "D": D}, {})
    assert step == 4 and "torch" in rng and meta["config"]["ch"] == 8
    ckpt = load_file(run / "checkpoints" / "step_0000004.safetensors")
    assert any(k.startswith("opt_G.state.") for k in ckpt) and any(k.startswith("G_ema.") for k in ckpt)


def test_resume_is_bitwise_exact(tmp_path):
    train(tiny_config(tmp_path / "straight", steps=4, conditional=True))
    train(tiny_config(tmp_path / "split", steps=2, conditional=True))
    train(tiny_config(tmp_path / "split", steps=4, conditional=True))  # resume=auto
    straight, split = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert straight.keys() == split.keys()
    differing = [k for k in straight if not torch.equal(straight[k], split[k])]
    assert differing == []


def test_killed_run_resumes_exactly(tmp_path):
    """SIGKILL a real training process after its first checkpoint; the resumed run ends bitwise equal."""
    train(tiny_config(tmp_path / "straight", steps=6))
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tritonsagan.train", "--out", str(killed), "--steps", "6", *cli_flags()]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list_checkpoints(killed / "checkpoints") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_on_disk = [s for s, _ in list_checkpoints(killed / "checkpoints")]
    assert steps_on_disk and steps_on_disk[-1] < 6, f"not killed mid-run: checkpoints {steps_on_disk}"
    train(tiny_config(killed, steps=6))
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(killed)
    assert [k for k in straight if not torch.equal(straight[k], resumed[k])] == []


def test_crash_mid_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny_config(run, steps=2))

    def crash(*args, **kwargs):
        raise OSError("simulated crash between the temporary write and the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        train(tiny_config(run, steps=4))
    monkeypatch.undo()
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2]
    assert not list((run / "checkpoints").glob("*.tmp"))  # no temporary file left behind
    step, _, _ = load_checkpoint(latest_checkpoint(run / "checkpoints"), {"G": Generator(ch=8)}, {})
    assert step == 2


def test_nan_loss_stops_with_a_clear_message(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_loss = step_module.hinge_d_loss
    calls = {"n": 0}

    def loss_that_explodes(real_logits, fake_logits):
        calls["n"] += 1
        loss = real_loss(real_logits, fake_logits)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(step_module, "hinge_d_loss", loss_that_explodes)
    with pytest.raises(TrainingDiverged, match=r"NaN or Inf by step 4.*step_0000002\.safetensors"):
        train(tiny_config(run, steps=6))
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda root: root, "data folder not found"),
        (lambda root: root.mkdir() or root, "no image files"),
        (lambda root: [write_image(root / f"{i}.png", i) for i in range(2)] and root, "fewer than one batch of 4"),
    ],
)
def test_unusable_folders_are_clear_errors(tmp_path, capsys, make, match):
    root = make(tmp_path / "images")
    assert main(["--data", str(root), "--out", str(tmp_path / "run"), "--steps", "1", *cli_flags()]) == 1
    assert match in capsys.readouterr().err


def test_help_and_config_files(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for flag in (
        "--data",
        "--out",
        "--steps",
        "--batch-size",
        "--ch",
        "--conditional",
        "--resume",
        "--device",
        "--compile",
        "--no-compile",
        "--seed",
        "--sample-every",
        "--save-every",
        "--n-dis",
        "--config",
    ):
        assert flag in help_text, flag

    toml = tmp_path / "cfg.toml"
    toml.write_text("steps = 2\nch = 8\nbatch_size = 4\nworkers = 0\nnum_samples = 4\ncompile = false\nlr_g = 2e-4\n")
    run = tmp_path / "run"
    assert main(["--config", str(toml), "--out", str(run), "--batch-size", "2"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["lr_g"] == 2e-4 and config["batch_size"] == 2 and config["steps"] == 2  # flags beat the file

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stepz": 3}))
    capsys.readouterr()
    assert main(["--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --config") and "unknown config keys: stepz" in err


def _ddp_worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    trainer = train(tiny_config(out, steps=3, save_every=3, sample_every=3, log_every=3))
    states = {
        f"{name}.{k}": v for name, model in (("G", trainer.G), ("D", trainer.D)) for k, v in model.state_dict().items()
    }
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in states.items()}, os.path.join(out, f"rank{rank}.safetensors"))
    torch.distributed.destroy_process_group()


def test_two_process_gloo_ddp_keeps_ranks_identical(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, port, str(out)), nprocs=2, join=True)
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert [k for k in rank0 if not torch.equal(rank0[k], rank1[k])] == []
    assert any(k.endswith("weight_u") for k in rank0) and any(k.endswith("running_mean") for k in rank0)
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [3]  # written by rank 0 only, once


def test_max_minutes_stops_with_a_checkpoint_and_the_same_command_continues(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, steps=4, log_every=1, max_minutes=1e-6))  # up at the first log step
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [1]
    assert "stopped at --max-minutes 1e-06 after step 1 of 4 (run it again to continue)" in capsys.readouterr().out
    train(tiny_config(run, steps=4, log_every=1))
    assert [s for s, _ in list_checkpoints(run / "checkpoints")][-1] == 4
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.parametrize("d_sn_in_g_step", [False, True])
def test_the_g_step_updates_ds_spectral_norm_vectors_only_when_asked(d_sn_in_g_step):
    """Off (the official code): D's power iteration runs in the D step only; on (BigGAN-PyTorch): in both."""
    step = tiny_step(d_sn_in_g_step=d_sn_in_g_step, diffaug="")
    layer, changed = step.D.blocks[1].conv1, []
    step.D.register_forward_pre_hook(lambda module, args: changed.append(layer.weight_u.clone()))
    step.D.register_forward_hook(
        lambda module, args, out: changed.append(not torch.equal(changed.pop(), layer.weight_u))
    )
    step(0, [(torch.rand(4, 3, 128, 128) * 2 - 1, None)])
    assert changed == [True, d_sn_in_g_step]  # the D step's forward, then the G step's


def test_mode_seeking_penalty_is_latent_distance_over_image_distance():
    fake, z = torch.randn(6, 3, 5, 5, dtype=torch.float64), torch.randn(6, 7, dtype=torch.float64)
    ratio = (fake[:3] - fake[3:]).abs().mean() / (z[:3] - z[3:]).abs().mean()
    assert float(mode_seeking_penalty(fake, z)) == pytest.approx(float(1 / (ratio + MODE_SEEKING_EPS)), rel=1e-6)
    # a G that draws one image whatever the latent pays the most
    assert float(mode_seeking_penalty(fake[:3].repeat(2, 1, 1, 1), z)) == pytest.approx(1 / MODE_SEEKING_EPS)


def test_mode_seeking_pairs_the_g_batchs_classes_and_adds_its_weighted_term(monkeypatch):
    step = tiny_step(num_classes=5, mode_seeking=0.5, diffaug="", batch_size=6)
    g_labels, d_logits, penalties = [], [], []
    step.G.register_forward_hook(lambda module, args, out: g_labels.append(args[1].clone()))
    step.D.register_forward_hook(lambda module, args, out: d_logits.append(out.detach()))
    monkeypatch.setattr(
        step_module,
        "mode_seeking_penalty",
        lambda fake, z: penalties.append(mode_seeking_penalty(fake, z)) or penalties[-1],
    )
    losses = step(0, [(torch.rand(6, 3, 128, 128) * 2 - 1, torch.randint(5, (6,)))])
    g_step_labels = g_labels[-1]  # the D step's fake batch first, then the G step's
    assert torch.equal(g_step_labels[:3], g_step_labels[3:])
    assert len(penalties) == 1 and float(losses["loss_g"]) == pytest.approx(
        float(-d_logits[-1].mean() + 0.5 * penalties[0].detach()), rel=1e-6
    )
