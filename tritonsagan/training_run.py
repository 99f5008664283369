"""One training run's state: its resolved config, ranks, run directory and lock, data stream, models,
optimisers, checkpoints and step (tritonsagan.step). tritonsagan.train's loop drives it."""

from __future__ import annotations

import os

import numpy as np
import torch

from tritonsagan.models import Generator

from .atomic_write import remove_temporary_files
from .data import check_enough_images, make_dataset, make_loader
from .distributed import setup_distributed
from .generate import iter_generate
from .images import from_uint8, make_grid, save_image
from .run_checkpoints import RunCheckpoints
from .run_directory import EMA_GENERATOR, RunDirectory, RunLock
from .step import RealBatch, TrainingModels, TrainingStep
from .train_config import TrainConfig, resolve_config


class TrainingRun:
    """The models, optimisers, data stream and step of one run. Built in this order:
    config -> dataset -> models (seeded) -> optimisers -> the run directory's lock -> checkpoint ->
    DDP and compile -> data stream, and last the RNG state of a resumed run, since building the models
    and the loader draws from the global RNG: a resumed run continues from exactly the state the
    checkpoint saved. Every check of the input that needs no checkpoint comes before the lock, the
    first write. `release()` gives the run directory back (train() does; so does the end of the process)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.world = setup_distributed(cfg.device)
        self.cfg = cfg = resolve_config(cfg, self.world)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self.directory = RunDirectory(cfg.out)
        random_crop = cfg.crop == "random"
        self.dataset = make_dataset(cfg.data, cfg.seed, cfg.conditional, random_crop, cfg.image_limits, cfg.image_size)
        self.per_rank_batch = cfg.batch_size // self.world.world_size
        check_enough_images(self.dataset, self.per_rank_batch)
        self.num_classes = self.dataset.num_classes if cfg.conditional else 0
        models = TrainingModels.build(cfg, self.num_classes, self.world)
        self.G, self.D, self.ema, self.opt_g, self.opt_d = models.G, models.D, models.ema, models.opt_g, models.opt_d
        modules = {"G": self.G, "D": self.D, EMA_GENERATOR: self.ema.model}
        self.checkpoints = RunCheckpoints(
            cfg, self.directory, self.world, modules, {"opt_G": self.opt_g, "opt_D": self.opt_d}, models.loss_scaling
        )
        self.lock = RunLock(self.directory) if self.world.is_main else None
        if self.world.is_main and (stray := remove_temporary_files(self.directory.root)):
            print(f"removed {len(stray)} temporary file(s) left by a process killed mid-write", flush=True)
        try:
            self.step, resumed_rng = self.checkpoints.resume()
        except BaseException:
            self.release()  # a run that cannot resume leaves its directory free at once, whoever holds the error
            raise
        self.training_step = TrainingStep(cfg, models, self.world)
        self.skipped_images = 0  # unreadable files passed over by this process's data stream
        loader = make_loader(
            self.dataset,
            self.per_rank_batch,
            self.step * cfg.n_dis,
            cfg.workers,
            self.world.rank,
            self.world.world_size,
        )
        self.batches = iter(loader)
        self.sample_z, self.sample_y = self._sample_inputs()
        if resumed_rng:
            self._restore_rng(resumed_rng)

    def _sample_inputs(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fixed latents (and labels) of the sample grids, the same for every run with this seed."""
        cfg, device = self.cfg, self.world.device
        z = torch.randn(cfg.num_samples, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(device)
        y = (torch.arange(cfg.num_samples) % self.num_classes).to(device) if self.num_classes else None
        return z, y

    def _restore_rng(self, rng: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(rng["torch"])
        if self.world.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.world.device)

    def next_batches(self) -> list[RealBatch]:
        """The data stream's next n_dis real batches, on the device."""
        device, batches = self.world.device, []
        for _ in range(self.cfg.n_dis):
            real, real_y, skipped = next(self.batches)
            self.skipped_images += int(skipped.sum())
            real_y = real_y.to(device, non_blocking=True) if self.num_classes else None
            batches.append((from_uint8(real.to(device, non_blocking=True)), real_y))
        return batches

    def take_step(self) -> dict[str, torch.Tensor]:
        """One training step on the next batches of the data stream; the step's losses."""
        out = self.training_step(self.step, self.next_batches())
        self.step += 1
        return out

    def ema_generator(self) -> Generator:
        """G_ema with the batch-norm statistics of its own weights at this step (tritonsagan.ema): what
        every output of the run is drawn from."""
        return self.ema.refresh_statistics(self.step)

    def save(self) -> None:
        """This step's checkpoint and G_ema's weights (RunCheckpoints.save)."""
        self.checkpoints.save(self.step, self.ema_generator() if self.world.is_main else None)

    def write_samples(self) -> dict[str, np.ndarray]:
        """Grids from the fixed latents and labels: step_N.png (G in eval mode) and step_N_ema.png;
        returns them by model name (G, G_ema)."""
        grids = {}
        for name, model, ema in (("G", self.G, False), (EMA_GENERATOR, self.ema_generator(), True)):
            grids[name] = make_grid(torch.cat(list(iter_generate(model, self.sample_z, self.sample_y))))
            save_image(grids[name], self.directory.sample_grid(self.step, ema))
        self.G.train()  # iter_generate left it in eval mode
        return grids

    def release(self) -> None:
        """Unlock the run directory and end the DataLoader workers. The workers ignore SIGTERM
        (stop_signals), which is how the interpreter's exit ends leftover children: a data stream
        still open then would keep the process waiting for them forever."""
        self.batches = None  # the iterator's finaliser tells its workers to finish, and waits for them
        if self.lock is not None:
            self.lock.release()
