"""Timing and memory helpers: CUDA events via triton.testing.do_bench, torch.utils.benchmark on CPU."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch


def median_ms(fn: Callable[[], Any], device: torch.device, quick: bool = False) -> float:
    """Median wall time of fn() in milliseconds, after warm-up."""
    if device.type == "cuda":
        import triton.testing

        return float(
            triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=50 if quick else 200, return_mode="median")
        )
    import torch.utils.benchmark as benchmark

    fn()  # warm-up (and compilation)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    # The least of a few medians: a burst of load from elsewhere on a shared machine inflates one round, not all.
    rounds = 1 if quick else 3
    return min(timer.blocked_autorange(min_run_time=0.2 if quick else 0.4).median for _ in range(rounds)) * 1e3


def rotating(fn: Callable[..., Any], input_sets: Sequence[tuple]) -> Callable[[], Any]:
    """fn over several input sets in turn, so no run is served from a cache warmed by the previous one."""
    cycle = itertools.cycle(input_sets)
    return lambda: fn(*next(cycle))


def peak_extra_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak memory fn() allocates above what was allocated before it (CUDA only; None elsewhere)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def floor_ms(flops: float, bytes_moved: float, floor: dict[str, float]) -> float:
    """The device floor of a kernel: max(flops / peak FLOP/s, bytes / peak bandwidth), in ms."""
    return max(flops / floor["flops_per_s"], bytes_moved / floor["bytes_per_s"]) * 1e3
