"""Faults and bad input (issue 22): nothing silent, nothing lost, preemption survived.

Each case was tried on the code before this file existed: it ran on silently, hung, lost work, or
ended in a traceback.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import cli_flags, final_weights, free_port, tiny_config
from safetensors.torch import load_file

import tritonsagan.step as step_module
from tritonsagan.checkpoint import list_checkpoints, read_checkpoint
from tritonsagan.cli import INTERRUPTED_EXIT_CODE, device_name
from tritonsagan.curves import main as curves_main
from tritonsagan.curves import read_metrics
from tritonsagan.run_directory import RunDirectory, RunInUse, load_generator
from tritonsagan.stop_signals import StopRequests
from tritonsagan.train import TrainingDiverged, train
from tritonsagan.train import main as train_main
from tritonsagan.training_run import TrainingRun
from tritonsagan.weights_io import WeightsError

SRC = str(Path(__file__).resolve().parents[1])  # where `python -m tritonsagan...` finds the package from a subprocess


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted tiny run of 8 steps, checkpoints at 4, 6 and 8: what interrupted runs must equal
    (the cadences of logs, samples and checkpoints draw no random numbers, so they may differ)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(tiny_config(run, steps=8))
    return run


def _weights_at(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step_{step:07d}.safetensors")


def _differing(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def _steps_logged(run: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run) if "loss_d" in r]


# ---- resuming with other settings -------------------------------------------------------------


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(ch=16), ["--ch 8 (this command: 16)"]),
        (dict(seed=3), ["--seed 0 (this command: 3)"]),
        (
            dict(batch_size=2, conditional=True),
            ["--batch-size 4 (this command: 2)", "--conditional False (this command: True)"],
        ),
        (dict(image_size=64), ["--image-size 128 (this command: 64)"]),
    ],
)
def test_resume_refuses_settings_that_shape_the_models_or_the_data(tmp_path, capsys, change, named):
    run = tmp_path / "run"
    train(tiny_config(run, steps=2))
    config_before = (run / "config.json").read_text()
    assert train_main(["--out", str(run), "--steps", "4", *cli_flags(**change)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(n in err for n in named) and "train into a new --out" in err
    assert (run / "config.json").read_text() == config_before and [
        s for s, _ in list_checkpoints(run / "checkpoints")
    ] == [2]


def test_resume_applies_and_records_the_settings_that_may_change(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, steps=2, log_every=1))
    trainer = train(tiny_config(run, steps=4, log_every=1, lr_g=1e-3, beta2=0.99))
    assert [g["lr"] for g in trainer.opt_g.param_groups] == [1e-3] and trainer.opt_g.param_groups[0]["betas"] == (
        0.0,
        0.99,
    )
    records = read_metrics(run)
    assert [(r["step"], r["lr_g"]) for r in records] == [(1, 1e-4), (2, 1e-4), (3, 1e-3), (4, 1e-3)]
    config = json.loads((run / "config.json").read_text())
    assert config["lr_g"] == 1e-3 and config["steps"] == 4
    history = RunDirectory(run).read_config_history()
    assert [h["step"] for h in history] == [0, 2] and history[0]["changed"] == {}
    assert all(h["device"] == device_name(torch.device("cpu")) for h in history)
    assert history[1]["changed"] == {"steps": [2, 4], "lr_g": [1e-4, 1e-3], "beta2": [0.9, 0.99]}
    _, meta = read_checkpoint(run / "checkpoints" / "step_0000004.safetensors")
    assert meta["config"]["lr_g"] == 1e-3 and meta["optimizers"]["opt_G"]["param_groups"][0]["lr"] == 1e-3


def test_resume_with_fewer_steps_than_done_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, steps=2))
    config_before = (run / "config.json").read_text()
    assert train_main(["--out", str(run), "--steps", "1", *cli_flags()]) == 1
    assert "--steps 1: " in capsys.readouterr().err and (run / "config.json").read_text() == config_before


# ---- one run directory, one process --------------------------------------------------------------


def test_a_second_training_on_a_run_directory_stops_at_once_with_the_pid(tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tritonsagan.run_directory import RunDirectory, RunLock; "
            "lock = RunLock(RunDirectory(sys.argv[1])); print('locked', flush=True); time.sleep(600)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=SRC,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(RunInUse, match=f"in use by another training process \\(pid {holder.pid}\\)"):
            train(tiny_config(run, steps=2))
        assert not (run / "config.json").exists() and not (run / "metrics.jsonl").exists()
    finally:
        holder.kill()  # the kernel releases a dead process's lock
        holder.wait()
    train(tiny_config(run, steps=2))
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2]


def test_the_lock_is_held_by_a_live_trainer_and_released_with_it(tmp_path):
    run = tmp_path / "run"
    holder = TrainingRun(tiny_config(run, steps=2))
    with pytest.raises(RunInUse, match=f"pid {os.getpid()}"):
        train(tiny_config(run, steps=2))
    holder.release()
    train(tiny_config(run, steps=2))


# ---- metrics.jsonl after a kill ----------------------------------------------------------------------


def test_metrics_hold_one_record_per_logged_step_after_a_kill(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, steps=4, log_every=1, save_every=2))
    # As a kill after step 4's record but before its checkpoint leaves it, mid-way through a line.
    (run / "checkpoints" / "step_0000004.safetensors").unlink()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss_d": 1.')
    assert curves_main([str(run), "--out", str(tmp_path / "c.png")]) == 0  # a cut-off last line reads
    for _ in range(2):  # every resume, not only the first
        train(tiny_config(run, steps=5, log_every=1, save_every=2))
        (run / "checkpoints" / "step_0000005.safetensors").unlink()
    assert _steps_logged(run) == [1, 2, 3, 4, 5]
    assert "dropped 3 line(s) after step 2" in capsys.readouterr().out


# ---- damaged checkpoints ---------------------------------------------------------------------------


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1000:-990] = bytes(b ^ 0xFF for b in data[-1000:-990])  # inside the tensors, past the header
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [_flip_bytes, lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), lambda p: p.write_bytes(b"")],
    ids=["bytes overwritten", "truncated", "empty"],
)
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
    tmp_path, capsys, damage, straight
):
    run = tmp_path / "run"
    train(tiny_config(run, steps=4))
    newest = run / "checkpoints" / "step_0000004.safetensors"
    damage(newest)
    with pytest.raises(WeightsError, match="step_0000004"):
        read_checkpoint(newest)  # never loaded silently
    capsys.readouterr()
    train(tiny_config(run, steps=6))
    out = capsys.readouterr()
    assert "warning: skipped " + str(newest) in out.err and "renamed it step_0000004.safetensors.damaged" in out.err
    assert f"resumed from {run / 'checkpoints' / 'step_0000002.safetensors'} at step 2" in out.out
    assert (run / "checkpoints" / "step_0000004.safetensors.damaged").is_file()
    assert _differing(_weights_at(straight, 6), final_weights(run)) == []


def test_when_no_checkpoint_passes_the_run_stops_and_keeps_them(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, steps=2))
    _flip_bytes(run / "checkpoints" / "step_0000002.safetensors")
    assert train_main(["--out", str(run), "--steps", "4", *cli_flags()]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and "damaged checkpoint" in err and err.count("\n") == 1
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2]  # not set aside: nothing to fall back to


def test_the_last_good_checkpoint_of_a_diverged_run_is_one_that_passed(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny_config(run, steps=4))
    _flip_bytes(run / "checkpoints" / "step_0000004.safetensors")
    real_loss = step_module.hinge_d_loss
    monkeypatch.setattr(step_module, "hinge_d_loss", lambda r, f: real_loss(r, f) * float("nan"))
    with pytest.raises(TrainingDiverged, match=r"last good checkpoint is \S*step_0000002\.safetensors$"):
        train(tiny_config(run, steps=6))


def test_temporary_files_of_a_killed_write_are_removed(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, steps=2))
    stray = [
        run / "checkpoints" / ".step_0000004.safetensors.k2j4.tmp",
        run / "generator" / ".model.safetensors.x1.tmp",
    ]
    for path in stray:
        path.write_bytes(b"half a file")
    train(tiny_config(run, steps=4))
    assert not any(p.exists() for p in stray) and "removed 2 temporary file(s)" in capsys.readouterr().out


def test_a_checkpoint_without_its_sidecar_still_gives_its_generator(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, steps=2))
    checkpoint = run / "checkpoints" / "step_0000002.safetensors"
    checkpoint.with_suffix(".json").unlink()
    G = load_generator(checkpoint)
    saved = {k[len("G_ema.") :]: v for k, v in load_file(checkpoint).items() if k.startswith("G_ema.")}
    assert G.config.ch == 8 and _differing(G.state_dict(), saved) == []


# ---- SIGINT and SIGTERM ----------------------------------------------------------------------------


def test_sigterm_mid_run_stops_with_a_checkpoint_and_the_resumed_run_is_bitwise_identical(tmp_path, straight):
    run = tmp_path / "run"
    # With DataLoader workers, and the signal sent to the whole process group as a scheduler may: the
    # workers outlive it until the checkpoint is written, and the process still exits.
    cmd = [
        sys.executable,
        "-m",
        "tritonsagan.train",
        "--out",
        str(run),
        "--steps",
        "8",
        *cli_flags(log_every=1, save_every=4, workers=2),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=SRC, start_new_session=True
    )
    deadline = time.time() + 120
    while (
        not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").stat().st_size
    ):  # step 1 logged: the handlers are set
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its workers too
        raise
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped_at = [s for s, _ in list_checkpoints(run / "checkpoints")][-1]
    assert 1 <= stopped_at < 8, f"not stopped mid-run: {stopped_at}"
    assert (
        f"error: stopped by SIGTERM after step {stopped_at} of 8; checkpoint {run / 'checkpoints'}" in err
        and "Traceback" not in err
    )
    train(tiny_config(run, steps=8, log_every=1, save_every=4))
    assert _differing(_weights_at(straight, 8), final_weights(run)) == []
    assert _steps_logged(run) == list(range(1, 9))


def _signal_at_step(monkeypatch, step: int, count: int) -> None:
    """Send this process SIGINT `count` times during training step `step` (counted from 1)."""
    real_step = TrainingRun.take_step

    def take_step(self):
        if self.step + 1 == step:
            for _ in range(count):
                os.kill(os.getpid(), signal.SIGINT)
        return real_step(self)

    monkeypatch.setattr(TrainingRun, "take_step", take_step)


@pytest.mark.parametrize(
    "presses, message, checkpoints",
    [
        (
            1,
            "stopped by SIGINT after step 3 of 6; checkpoint {checkpoints}/step_0000003.safetensors",
            [2, 3],
        ),  # after the step
        (
            2,
            "stopped at once by Ctrl-C at step 2; nothing after the last checkpoint ({checkpoints}/step_0000002.safetensors)",
            [2],
        ),
    ],
)
def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_twice_at_once(
    tmp_path, capsys, monkeypatch, presses, message, checkpoints
):
    run = tmp_path / "run"
    # Python's own handler, or SIG_IGN where a shell started pytest in the background
    handler = signal.getsignal(signal.SIGINT)
    _signal_at_step(monkeypatch, 3, count=presses)
    assert train_main(["--out", str(run), "--steps", "6", *cli_flags()]) == INTERRUPTED_EXIT_CODE
    err = capsys.readouterr().err
    assert "error: " + message.format(checkpoints=run / "checkpoints") in err and "Traceback" not in err
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == checkpoints
    assert signal.getsignal(signal.SIGINT) is handler  # the handler is given back


def test_stop_requests_record_the_first_signal():
    with StopRequests() as stop:
        assert stop.received is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received is signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# ---- a restarted torchrun -------------------------------------------------------------------------------


def _torchrun(out: Path, max_restarts: int, log: Path) -> subprocess.Popen:
    """A 2-rank CPU training of 6 steps under torchrun, its output in `log`."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        str(max_restarts),
        "-m",
        "tritonsagan.train",
        "--out",
        str(out),
        "--steps",
        "6",
        *cli_flags(log_every=1, save_every=2),
    ]
    with log.open("w") as output:
        return subprocess.Popen(
            cmd, stdout=output, stderr=subprocess.STDOUT, cwd=SRC, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )


def _worker_of_rank(launcher: int, rank: int) -> int | None:
    """The pid of torchrun's worker process with RANK=rank, read from /proc."""
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(pid)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_torchrun_restarts_a_killed_rank_and_resumes_to_the_same_weights(tmp_path):
    killed = tmp_path / "killed"
    restarted = _torchrun(killed, max_restarts=1, log=tmp_path / "killed.log")
    deadline = time.time() + 300
    while not list_checkpoints(killed / "checkpoints"):
        assert time.time() < deadline and restarted.poll() is None, (tmp_path / "killed.log").read_text()
        time.sleep(0.05)
    worker = _worker_of_rank(restarted.pid, rank=1)
    assert worker is not None and [s for s, _ in list_checkpoints(killed / "checkpoints")][-1] < 6
    os.kill(worker, signal.SIGKILL)
    assert restarted.wait(timeout=300) == 0, (tmp_path / "killed.log").read_text()
    assert "resumed from" in (tmp_path / "killed.log").read_text()  # the restarted workers went on from a checkpoint
    straight = _torchrun(tmp_path / "straight", max_restarts=0, log=tmp_path / "straight.log")
    assert straight.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()
    assert _differing(final_weights(tmp_path / "straight"), final_weights(killed)) == []


def _two_agents(out: Path, steps: int, log: Path) -> None:
    """Two torchrun agents, one CPU process each, as on two machines: they meet at a c10d rendezvous on
    localhost and train to `steps` (4 images per step, 2 per rank), writing to one shared run directory."""
    endpoint = f"localhost:{free_port()}"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
        "--rdzv-id",
        out.name,
        "-m",
        "tritonsagan.train",
        "--out",
        str(out),
        "--steps",
        str(steps),
        *cli_flags(log_every=1, save_every=2),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("a") as output:
        agents = [subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, cwd=SRC, env=env) for _ in range(2)]
        codes = [agent.wait(timeout=300) for agent in agents]
    assert codes == [0, 0], log.read_text()


def test_two_torchrun_agents_rendezvous_train_and_resume_to_the_same_weights(tmp_path):
    """The README's multi-node command on one machine: two agents, two ranks in all."""
    log = tmp_path / "agents.log"
    _two_agents(tmp_path / "straight", steps=4, log=log)
    _two_agents(tmp_path / "split", steps=2, log=log)
    _two_agents(tmp_path / "split", steps=4, log=log)
    assert "x 2 ranks" in log.read_text() and "resumed from" in log.read_text()
    assert _differing(final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")) == []


# ---- flags and files named in one line -----------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--lr-g", "nan"], "--lr-g must be a positive number, got nan"),
        (["--beta2", "1.5"], "--beta2 must be in [0, 1), got 1.5"),
        (["--fid-every", "2", "--fid-weights", "/nonexistent/inception.pt"], "/nonexistent/inception.pt"),
        (["--min-image-side", "0"], "--min-image-side must be >= 1"),
        (["--image-size", "100"], "--image-size must be one of 32, 64, 128, 256, got 100"),
        (["--mode-seeking", "-1"], "--mode-seeking must be a number >= 0, got -1.0"),
        (
            ["--mode-seeking", "1", "--batch-size", "3"],
            "--batch-size 3 with --accumulate 1 gives 3 per rank and micro-batch",
        ),
    ],
)
def test_bad_flags_are_named_before_the_run_directory_is_made(tmp_path, capsys, flags, named):
    run = tmp_path / "run"
    assert train_main(["--out", str(run), "--steps", "2", *cli_flags(), *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config:") and named in err and err.count("\n") == 1
    assert not run.exists()


def test_out_that_cannot_be_a_run_directory(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    assert train_main(["--out", str(file), "--steps", "2", *cli_flags()]) == 1
    assert f"--out {file} is a file; a run directory is a folder" in capsys.readouterr().err
    assert train_main(["--out", str(file / "run"), "--steps", "2", *cli_flags()]) == 1
    assert f"--out {file / 'run'}: cannot write there" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [("[1, 2]", "holds a JSON list, not an object of config fields"), ('"steps"', "holds a JSON str")],
)
def test_config_file_that_is_not_an_object(tmp_path, capsys, content, message):
    config = tmp_path / "c.json"
    config.write_text(content)
    assert train_main(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --config {config}: {message}") and "Traceback" not in err


# ---- out of memory -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, remedy",
    [
        ([], "try --accumulate 2 (micro-batches of 2 images, the same batch of 4)"),
        (["--accumulate", "2"], "try --accumulate 4 (micro-batches of 1 image, the same batch of 4)"),
        (["--mode-seeking", "0.1"], "try --accumulate 2 (micro-batches of 2 images, the same batch of 4)"),
        (["--accumulate", "4"], "each rank's batch is already split as far as it goes: lower --batch-size"),
    ],
)
def test_out_of_memory_is_one_line_with_a_batch_that_fits_and_the_last_checkpoint(
    tmp_path, capsys, monkeypatch, flags, remedy
):
    step_call = step_module.TrainingStep.__call__

    def out_of_memory_at_step_3(self, step, batches):
        if step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return step_call(self, step, batches)

    monkeypatch.setattr(step_module.TrainingStep, "__call__", out_of_memory_at_step_3)
    run = tmp_path / "run"
    assert train_main(["--out", str(run), "--steps", "4", *cli_flags(), *flags]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: out of memory at step 3: batch 4 (4 per rank, ")
    assert "ch 8, 128x128, precision fp32, on " in err and " GiB; " in err and remedy in err
    assert (
        f"The last checkpoint is {run / 'checkpoints' / 'step_0000002.safetensors'}: the command with the new flag continues from it"
        in err
    )


def test_out_of_memory_before_any_checkpoint_says_so(tmp_path, capsys, monkeypatch):
    def out_of_memory(self, step, batches):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(step_module.TrainingStep, "__call__", out_of_memory)
    assert train_main(["--out", str(tmp_path / "run"), "--steps", "4", *cli_flags()]) == 1
    err = capsys.readouterr().err
    assert "out of memory at step 1: " in err and err.rstrip().endswith("No checkpoint was written yet")
