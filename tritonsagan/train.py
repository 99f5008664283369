"""tritonsagan-train: SAGAN training with the paper's recipe.

Hinge loss, Adam(beta1=0, beta2=0.9) with two time-scale learning rates (G 1e-4, D 4e-4), one D step
per G step, spectral norm everywhere, self-attention at 32x32, an exponential moving average of G.

The loop is `training_loop` here, driving a TrainingRun (tritonsagan.training_run: models, data,
checkpoints); the step's maths is tritonsagan.step; the config and its flags tritonsagan.train_config.
What a run writes where: tritonsagan.run_directory. Under torchrun it trains with
DistributedDataParallel (tritonsagan.distributed); rank 0 writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys

import torch
import torch.distributed as dist

from .cli import device_memory_bytes, device_name, run_command
from .config_flags import add_config_flags, build_config
from .curves import MetricsLog
from .errors import TritonsaganError
from .evaluate import FidMonitor
from .progress import ProgressDisplay, RunClock, due, metrics_record, start_line
from .stop_signals import StopRequests
from .train_config import TrainConfig, upgrade_saved_config
from .training_run import TrainingRun

__all__ = [
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "TrainingOutOfMemory",
    "main",
    "train",
    "training_loop",
]


class TrainingDiverged(TritonsaganError, RuntimeError):
    """A loss became NaN or Inf."""


class TrainingInterrupted(TritonsaganError):
    """SIGINT or SIGTERM stopped the run; the message says what was saved. Exits 128 + the signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class TrainingOutOfMemory(TritonsaganError, RuntimeError):
    """The device ran out of memory at a step; the message says what would fit and what was saved."""


def train(cfg: TrainConfig) -> TrainingRun:
    """Train to cfg.steps (resuming when a checkpoint is there); return the run with its models."""
    run = TrainingRun(cfg)
    try:
        training_loop(run)
    except torch.OutOfMemoryError:
        raise TrainingOutOfMemory(out_of_memory_message(run)) from None
    except KeyboardInterrupt:  # a second Ctrl-C (the first asks for a clean stop), or one before the steps began
        raise TrainingInterrupted(
            f"stopped at once by Ctrl-C at step {run.step}; nothing after the last checkpoint "
            f"({run.checkpoints.describe_last_good()}) was saved",
            signal.SIGINT,
        ) from None
    finally:
        run.release()
    return run


def fitting_accumulation(per_rank_batch: int, accumulate: int, paired: bool) -> int | None:
    """The next --accumulate after `accumulate` that splits each rank's batch evenly (into even
    micro-batches when the mode-seeking term pairs their images), at least twice as many
    micro-batches; None when none is left."""
    for n in range(2 * accumulate, per_rank_batch + 1):
        micro, remainder = divmod(per_rank_batch, n)
        if not remainder and not (paired and micro % 2):
            return n
    return None


def out_of_memory_message(run: TrainingRun) -> str:
    """One line: the step, what it computed and on what, an --accumulate that would fit, the last checkpoint."""
    cfg, world = run.cfg, run.world
    per_rank = cfg.batch_size // world.world_size
    memory = device_memory_bytes(world.device) / 2**30
    where = f"{device_name(world.device)} with {memory:.1f} GiB"
    computed = (
        f"batch {cfg.batch_size} ({per_rank} per rank, {cfg.accumulate} micro-batch(es) of {per_rank // cfg.accumulate}), "
        f"ch {cfg.ch}, {cfg.image_size}x{cfg.image_size}, precision {cfg.precision}"
    )
    fitting = fitting_accumulation(per_rank, cfg.accumulate, paired=bool(cfg.mode_seeking))
    if fitting is None:
        remedy = "each rank's batch is already split as far as it goes: lower --batch-size, --ch or --image-size"
    else:
        micro = per_rank // fitting
        remedy = f"try --accumulate {fitting} (micro-batches of {micro} image{'s' * (micro > 1)}, the same batch of {cfg.batch_size})"
    last = run.checkpoints.last_good
    saved = (
        f"The last checkpoint is {last}: the command with the new flag continues from it"
        if last
        else "No checkpoint was written yet"
    )
    return f"out of memory at step {run.step + 1}: {computed}, on {where}; {remedy}. {saved}"


def training_loop(run: TrainingRun) -> None:
    """The steps from the run's to cfg.steps, each output at its cadence. --max-minutes, SIGINT
    and SIGTERM end them early after a step, with a checkpoint; the signals then raise TrainingInterrupted."""
    cfg, world = run.cfg, run.world
    if world.is_main:
        config = dataclasses.asdict(cfg)
        run.directory.write_config(config, run.step, run.checkpoints.changed_settings, device_name(world.device))
        print(start_line(run), flush=True)
    clock = RunClock(cfg, run.step, world)
    # Whether every loss so far is finite, kept on the device: reading it makes the host wait for the
    # GPU, so it is read only at log and save steps (a NaN stops the run before it is logged or saved).
    finite = torch.ones((), dtype=torch.bool, device=world.device)
    stopped_for_time = interrupted = False
    with StopRequests() as stop, ProgressDisplay(world.is_main, cfg.steps, clock) as display:
        outputs = StepOutputs(run, clock, display)
        try:
            while run.step < cfg.steps:
                out = run.take_step()
                finite &= torch.isfinite(out["loss_d"]) & torch.isfinite(out["loss_g"])
                step = run.step
                # Every rank must stop at the same step: they agree on the clock at log steps, on a stop signal at every step.
                stopped_for_time = (
                    bool(cfg.max_minutes) and due(step, cfg.log_every) and step < cfg.steps and clock.time_is_up()
                )
                interrupted = world.any_rank(stop.received is not None)
                last = step == cfg.steps or stopped_for_time or interrupted
                if (due(step, cfg.log_every, last) or due(step, cfg.save_every)) and not bool(finite):
                    raise TrainingDiverged(
                        f"loss became NaN or Inf by step {step}; stopping. "
                        f"The last good checkpoint is {run.checkpoints.describe_last_good()}"
                    )
                outputs.write(out, last, interrupted)
                if stopped_for_time or interrupted:
                    break
        finally:
            outputs.close()
    if interrupted and run.step < cfg.steps:
        received = stop.received or signal.SIGTERM  # another rank's signal stopped this one
        raise TrainingInterrupted(
            f"stopped by {received.name} after step {run.step} of {cfg.steps}; checkpoint {run.checkpoints.last_good}; "
            "run the same command to continue",
            received,
        )
    if world.is_main:
        ended = f"done: {run.step} steps"
        if stopped_for_time:
            ended = f"stopped at --max-minutes {cfg.max_minutes:g} after step {run.step} of {cfg.steps} (run it again to continue)"
        print(
            f"{ended}; samples in {run.directory.samples}, generator weights in {run.directory.generator}", flush=True
        )


class StepOutputs:
    """What the loop writes after a step, each at its cadence: the metrics record and the progress
    display, sample grids, FID and KID of G_ema (a new best kept as checkpoints/best), checkpoints."""

    def __init__(self, run: TrainingRun, clock: RunClock, display: ProgressDisplay) -> None:
        cfg, main = run.cfg, run.world.is_main
        self.run, self.clock, self.display = run, clock, display
        self.log = MetricsLog(run.directory, run.step, enabled=main, tensorboard=cfg.tensorboard)
        self.fid = None
        if main and cfg.fid_every:
            self.fid = FidMonitor(cfg, run.directory.fid_reference, run.world.device)
        self.best_fid = run.directory.best_fid() if self.fid else math.inf

    def write(self, out: dict[str, torch.Tensor], last: bool, interrupted: bool) -> None:
        run, cfg, step = self.run, self.run.cfg, self.run.step
        main = run.world.is_main
        record = (
            metrics_record(run, out, self.clock.images_per_s(step)) if main and due(step, cfg.log_every, last) else None
        )
        if record:
            self.log.write(record)
        self.display.update(step, record)
        # A preempted job has seconds left: after a stop signal, only the checkpoint.
        if main and due(step, cfg.sample_every, last) and not interrupted:
            self.log.write_images(step, run.write_samples())
        if self.fid and due(step, cfg.fid_every) and not interrupted:
            self._evaluate_fid()
        if due(step, cfg.save_every, last):
            run.save()

    def _evaluate_fid(self) -> None:
        scores = self.fid(self.run.ema_generator())
        self.log.write({"step": self.run.step, **{k: scores[k] for k in ("fid", "kid", "kid_std")}})
        if scores["fid"] < self.best_fid:
            self.run.checkpoints.save_best(self.run.step, scores)
            self.best_fid = scores["fid"]

    def close(self) -> None:
        self.log.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tritonsagan-train",
        description="Train SAGAN (128x128 by default; hinge loss, TTUR, spectral norm, self-attention, EMA of G). "
        "Run under torchrun for multi-GPU or multi-process CPU training.",
    )
    parser.add_argument("--config", help="JSON or TOML file of config fields; flags given here override it")
    add_config_flags(parser, TrainConfig)
    return parser


def _run(args: argparse.Namespace) -> None:
    try:
        train(build_config(TrainConfig, args, upgrade_saved_config))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
