"""Forward-time input checks shared by G and D, with messages that name the offending value."""

from __future__ import annotations

import torch


def check_labels(model: str, y: torch.Tensor | None, batch: int, num_classes: int) -> None:
    if num_classes == 0:
        if y is not None:
            raise ValueError(f"{model}: unconditional model (num_classes=0) got class labels")
        return
    if y is None:
        raise ValueError(f"{model}: conditional model (num_classes={num_classes}) needs class labels y")
    if y.shape != (batch,) or y.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{model}: y must be an integer tensor of shape ({batch},), got {y.dtype} {tuple(y.shape)}")
    # A value check needs the data; skip it while tracing for torch.compile.
    if not torch.compiler.is_compiling() and y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{model}: class labels must be in [0, {num_classes}), got values in [{int(y.min())}, {int(y.max())}]"
        )
