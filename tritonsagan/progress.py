"""What a training run says while it runs: the cadences, the clock (images/s, the --max-minutes
deadline), the line it starts with, its metrics records and the progress display."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch

from tritonsagan.models import SelfAttention

from .distributed import Distributed
from .train_config import TrainConfig, describe_device_settings

if TYPE_CHECKING:
    from .training_run import TrainingRun


def attention_gammas(model: torch.nn.Module) -> list[float]:
    return [m.gamma.item() for m in model.modules() if isinstance(m, SelfAttention)]


def due(step: int, every: int, last: bool = False) -> bool:
    """Whether a cadence (--log-every, --save-every, ...) falls on this step; every one falls on the last."""
    return last or step % every == 0


class RunClock:
    """This process's training time: images/s since it started, and the --max-minutes deadline."""

    def __init__(self, cfg: TrainConfig, start_step: int, world: Distributed) -> None:
        self.start, self.start_step, self.world = time.perf_counter(), start_step, world
        self.images_per_step = cfg.n_dis * cfg.batch_size
        self.deadline = self.start + 60 * cfg.max_minutes if cfg.max_minutes else math.inf

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def images_per_s(self, step: int) -> float:
        return (step - self.start_step) * self.images_per_step / self.elapsed()

    def seconds_left(self, step: int, total: int) -> float:
        """At the pace since the start, the time until step `total`."""
        return self.elapsed() / max(step - self.start_step, 1) * (total - step)

    def time_is_up(self) -> bool:
        """Whether the deadline has passed, agreed by every rank (they must stop at one step)."""
        return self.world.any_rank(time.perf_counter() >= self.deadline)


def metrics_record(run: TrainingRun, out: dict[str, torch.Tensor], images_per_s: float) -> dict:
    """One line of metrics.jsonl: the step's losses and D's mean logits, the attention gammas, speed,
    and under fp16 the optimiser steps loss scaling skipped."""
    loss_scaling = run.training_step.loss_scaling
    skipped = {f"skipped_steps_{name.lower()}": n for name, n in loss_scaling.skipped_steps.items()}
    return {
        "step": run.step,
        **{k: float(out[k]) for k in ("loss_d", "loss_g", "d_real", "d_fake")},
        "gamma_g": attention_gammas(run.G),
        "gamma_d": attention_gammas(run.D),
        "images_per_s": images_per_s,
        "lr_g": run.opt_g.param_groups[0]["lr"],
        "lr_d": run.opt_d.param_groups[0]["lr"],
        "skipped_images": run.skipped_images,
        **(skipped if loss_scaling.enabled else {}),  # optimiser steps fp16's loss scaling skipped, so far
    }


def start_line(run: TrainingRun) -> str:
    """What a run is about to do, said once at its start: device, widths, batch, steps, data, the
    settings decided for the device, and where the outputs go."""
    cfg, world, dataset = run.cfg, run.world, run.dataset
    if world.device.type == "cuda":
        device = f"{world.device} ({torch.cuda.get_device_name(world.device)})"
    else:
        device = f"cpu ({torch.get_num_threads()} threads)"
    ranks = f" x {world.world_size} ranks" if world.world_size > 1 else ""
    classes = f", {run.num_classes} classes" if run.num_classes else ", unconditional"
    return (
        f"training on {device}{ranks}: {cfg.image_size}x{cfg.image_size}, ch {cfg.ch}, batch {cfg.batch_size}, steps {run.step} -> {cfg.steps}; "
        f"data {cfg.data} ({len(dataset)} images{classes}); {describe_device_settings(cfg.compile, cfg.precision, cfg.diffaug)}; "
        f"outputs in {run.directory.root}/ (samples/, generator/, curves.png, metrics.jsonl)"
    )


class ProgressDisplay:
    """A progress bar on a terminal, a line per logged step elsewhere (a log file, a pipe, CI), nothing
    off rank 0."""

    def __init__(self, enabled: bool, total: int, clock: RunClock) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.enabled, self.total, self.clock = enabled, total, clock
        self.bar = None
        if enabled and Console().is_terminal:
            columns = (
                TextColumn("step"),
                MofNCompleteColumn(),
                BarColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
            )
            self.bar = Progress(*columns)
            self.task = self.bar.add_task("train", total=total, completed=clock.start_step, status="")

    def __enter__(self) -> ProgressDisplay:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()

    def update(self, step: int, record: dict | None) -> None:
        """Move to `step`; with the step's metrics record, show its losses and speed."""
        status = record and f"D {record['loss_d']:.3f}  G {record['loss_g']:.3f}  {record['images_per_s']:.1f} img/s"
        if self.bar:
            self.bar.update(self.task, completed=step, **({"status": status} if status else {}))
        elif self.enabled and status:
            elapsed, left = self.clock.elapsed(), self.clock.seconds_left(step, self.total)
            print(
                f"step {step}/{self.total}  {status}  elapsed {_minutes(elapsed)}, about {_minutes(left)} left",
                flush=True,
            )


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
