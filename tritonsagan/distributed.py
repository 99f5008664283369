"""The ranks of a training run: torchrun's environment to a process group and a device.

Under torchrun a run trains with DistributedDataParallel (NCCL on CUDA, gloo on CPU); a plain process
is rank 0 of 1. Rank 0 writes the run's files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .cli import resolve_device


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    # The process group of the ranks' agreements (stop now?): gloo on the host, so asking never waits
    # for the GPU (None: the default group, gloo already on CPU).
    control_group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any_rank(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (every rank must ask, at the same step)."""
        if self.world_size == 1:
            return flag
        votes = torch.tensor(float(flag))
        dist.all_reduce(votes, op=dist.ReduceOp.MAX, group=self.control_group)
        return bool(votes)

    def broadcast_buffers(self, *models: torch.nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics, spectral-norm vectors) on every rank."""
        if self.world_size > 1:
            for model in models:
                for buffer in model.buffers():
                    dist.broadcast(buffer, src=0)


def setup_distributed(device: str) -> Distributed:
    """torchrun's environment -> process group and device (--device, resolved); a plain process gets
    rank 0 of 1."""
    device = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(device=torch.device(device))
    on_cuda = device.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if on_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        rank = int(os.environ.get("RANK", "0"))
        store = _restart_store(rank, world_size)
        dist.init_process_group("nccl" if on_cuda else "gloo", store=store, rank=rank, world_size=world_size)
    control_group = dist.new_group(backend="gloo") if on_cuda else None
    device = torch.device(f"cuda:{local_rank}" if on_cuda else "cpu")
    return Distributed(dist.get_rank(), dist.get_world_size(), device, control_group)


def _restart_store(rank: int, world_size: int) -> dist.Store | None:
    """Under torchrun, the store of this attempt's process group: torchrun's agent keeps one store across
    the restarts of --max-restarts, where a restarted group would read the dead group's addresses and
    fail to connect; a prefix per attempt keeps them apart. None outside torchrun (env:// as usual)."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        return None
    hosts_store = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=hosts_store)
    return dist.PrefixStore(f"tritonsagan/attempt_{attempt}", store)
