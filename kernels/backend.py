"""Which implementation the dispatching ops use: "auto" (Triton on CUDA, torch elsewhere), or forced.

"triton" runs the Triton kernels wherever they can run (CUDA, or CPU under TRITON_INTERPRET=1);
"torch" runs the torch paths (chunked attention, torch spectral norm) everywhere; "naive" is what
SAGAN ports do: attention as bmm + softmax over the whole N_q x N_k matrix, and the torch spectral
norm (the benchmarks' baseline).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

BACKENDS = ("auto", "triton", "torch", "naive")
_selected = "auto"


def selected_backend() -> str:
    return _selected


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager forcing the kernels' implementation inside its block."""
    global _selected
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    previous, _selected = _selected, name
    try:
        yield
    finally:
        _selected = previous
