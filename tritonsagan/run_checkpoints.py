"""A training run's checkpoints: resume from the newest good one (or the one --resume names), save
one at a step with G_ema's weights, keep the best by FID. The files' format: tritonsagan.checkpoint."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tritonsagan.models import Generator

from .checkpoint import (
    checkpoint_path,
    list_checkpoints,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    set_aside,
    write_checkpoint,
)
from .config_flags import flag_name
from .distributed import Distributed
from .errors import ConfigError, TritonsaganError
from .run_directory import GENERATOR_CONFIG, RunDirectory
from .step import LossScaling
from .train_config import TrainConfig, settings_changed_on_resume
from .weights_io import WeightsError

LOSS_SCALING = "loss_scaling"  # the checkpoint's record of the fp16 loss scalers (step.LossScaling)


class CheckpointWriteError(TritonsaganError, OSError):
    """A checkpoint could not be written (e.g. a full disk); the message names the last good one."""


class RunCheckpoints:
    """The checkpoints of one run: what it saves (`modules`, `optimizers`, the RNG states, the config)
    and which one is the last known good."""

    def __init__(
        self,
        cfg: TrainConfig,
        run: RunDirectory,
        world: Distributed,
        modules: dict[str, torch.nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        loss_scaling: LossScaling,
    ) -> None:
        self.cfg, self.run, self.world, self.modules, self.optimizers = cfg, run, world, modules, optimizers
        self.loss_scaling = loss_scaling
        self.last_good: Path | None = None  # the newest checkpoint known to pass its checksum
        self.changed_settings: dict[str, tuple] = {}  # what this run segment changed from its checkpoint

    def resume(self) -> tuple[int, dict[str, torch.Tensor]]:
        """Load the checkpoint that --resume names into the modules and optimisers, check this run's
        settings against it and apply the ones that changed; its step and RNG states (0, {} when fresh)."""
        cfg = self.cfg
        if cfg.resume == "never":
            if list_checkpoints(self.run.checkpoints):
                raise ConfigError(
                    f"{self.run.checkpoints} already holds checkpoints; use --resume auto or another --out"
                )
            return 0, {}
        if cfg.resume == "auto":
            found = self._newest_good()
            if found is None:
                return 0, {}
            path, tensors, meta = found
        else:
            path = Path(cfg.resume)
            tensors, meta = read_checkpoint(path)
        if meta["step"] > cfg.steps:
            raise ConfigError(
                f"--steps {cfg.steps}: {path} is at step {meta['step']} already; give --steps {meta['step']} or more"
            )
        self.changed_settings = settings_changed_on_resume(path, meta["config"], dataclasses.asdict(cfg))
        step, rng = restore_checkpoint(path, tensors, meta, self.modules, self.optimizers)
        if LOSS_SCALING in meta:  # absent from checkpoints written before fp16 training existed
            self.loss_scaling.load_state_dict(meta[LOSS_SCALING])
        lrs = {"opt_G": cfg.lr_g, "opt_D": cfg.lr_d}
        for name, optimizer in self.optimizers.items():
            for (
                group
            ) in optimizer.param_groups:  # the optimiser state brought the old ones back: this run's settings hold
                group.update(lr=lrs[name], betas=(cfg.beta1, cfg.beta2))
        self.last_good = path
        if self.world.is_main:
            changed = ", ".join(
                f"{flag_name(name)} {old!r} -> {new!r}" for name, (old, new) in self.changed_settings.items()
            )
            print(f"resumed from {path} at step {step}" + (f", with {changed}" if changed else ""), flush=True)
        return step, rng

    def _newest_good(self) -> tuple[Path, dict[str, torch.Tensor], dict] | None:
        """The newest checkpoint of the run that passes its checksum, read. Damaged newer ones are
        named, and set aside (renamed *.damaged) once a good one is found; when none passes, an error."""
        skipped = []
        for _, path in reversed(list_checkpoints(self.run.checkpoints)):
            try:
                tensors, meta = read_checkpoint(path)
            except (WeightsError, FileNotFoundError) as err:  # not found: rank 0 set it aside meanwhile
                skipped.append((path, err))
                continue
            if self.world.is_main:
                for damaged, err in skipped:
                    if damaged.exists():
                        print(
                            f"warning: skipped {err}; renamed it {set_aside(damaged).name}", file=sys.stderr, flush=True
                        )
            return path, tensors, meta
        if skipped:
            raise WeightsError(
                f"no checkpoint in {self.run.checkpoints} passes its check: "
                + "; ".join(str(err) for _, err in skipped)
                + ". Move them away to start the run again from step 0, or train into a new --out"
            )
        return None

    def _contents(self) -> tuple[dict[str, torch.Tensor], dict]:
        rng = {"torch": torch.get_rng_state()}
        if self.world.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.world.device)
        G_config = self.modules["G"].config
        return rng, {
            "config": dataclasses.asdict(self.cfg),
            GENERATOR_CONFIG: dataclasses.asdict(G_config),
            LOSS_SCALING: self.loss_scaling.state_dict(),
        }

    def save(self, step: int, G_ema: Generator | None) -> None:
        """The step's checkpoint and G_ema's weights (None off rank 0), written by rank 0 while the others wait. A failed
        write (a full disk) leaves every earlier file intact and raises CheckpointWriteError naming the
        file and the last good checkpoint."""
        path = checkpoint_path(self.run.checkpoints, step)
        if self.world.is_main:
            rng, extra = self._contents()
            keep = self.cfg.keep_checkpoints
            try:
                save_checkpoint(self.run.checkpoints, step, self.modules, self.optimizers, rng, extra, keep)
                G_ema.save_pretrained(self.run.generator)
            except OSError as err:
                raise CheckpointWriteError(
                    f"could not write the checkpoint of step {step}: {err}. Nothing was half-written; "
                    f"the last good checkpoint is {self.describe_last_good()}"
                ) from err
        if self.world.world_size > 1:
            dist.barrier()
        self.last_good = path

    def save_best(self, step: int, scores: dict) -> None:
        """checkpoints/best.safetensors: a full checkpoint of this step, with its FID and KID."""
        rng, extra = self._contents()
        extra.update(fid=scores["fid"], kid=scores["kid"], kid_std=scores["kid_std"])
        write_checkpoint(self.run.best_checkpoint, step, self.modules, self.optimizers, rng, extra)

    def describe_last_good(self) -> str:
        return str(self.last_good or "none (no checkpoint was written yet)")
