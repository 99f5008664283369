"""Weights in safetensors: reading, atomic writing, and checking a state dict against its model, with
errors that name the file and what is wrong. Weights and checkpoints are only ever read from
safetensors (never pickle)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save

from .atomic_write import atomic_write_bytes
from .errors import TritonsaganError

SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024  # the format's own cap on the JSON header
LISTED_KEYS = 8  # how many offending keys an error message shows


class WeightsError(TritonsaganError, ValueError):
    """A weights or checkpoint file that cannot be used: foreign, truncated, or mismatched."""


def save_safetensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Atomically save CPU, contiguous, unshared copies of `tensors`."""
    plain = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
    atomic_write_bytes(path, save(plain, metadata=metadata))


def _check_safetensors_layout(path: Path) -> dict:
    """Validate the header and the data length before handing the file to safetensors."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise WeightsError(f"{path}: not a safetensors file ({size} bytes, too short for a header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > SAFETENSORS_HEADER_LIMIT:
            raise WeightsError(f"{path}: not a safetensors file (no valid header; is it a pickle checkpoint?)")
        if 8 + header_len > size:
            raise WeightsError(
                f"{path}: truncated safetensors file (header needs {8 + header_len} bytes, file has {size})"
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise WeightsError(f"{path}: not a safetensors file (header is not JSON: {err})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: not a safetensors file (header is not a JSON object)")
    data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + header_len + data_end > size:
        raise WeightsError(
            f"{path}: truncated safetensors file (tensors need {8 + header_len + data_end} bytes, file has {size})"
        )
    return header.get("__metadata__") or {}


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A safetensors file's string metadata, from its header alone (the file checked, its tensors not read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return _check_safetensors_layout(path)


def load_safetensors(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load every tensor of a safetensors file plus its string metadata."""
    metadata = read_safetensors_metadata(path)
    try:
        tensors = load_file(path, device=str(device))
    except Exception as err:  # safetensors raises its own error types; name the file
        raise WeightsError(f"{path}: unreadable safetensors file ({err})") from None
    return tensors, metadata


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:LISTED_KEYS])
    return shown + (f" (+{len(keys) - LISTED_KEYS} more)" if len(keys) > LISTED_KEYS else "")


def check_state_dict(path: Path, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Raise a WeightsError naming the missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{key} {tuple(tensors[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(tensors))
        if tensors[key].shape != expected[key].shape
    ]
    if missing:
        problems.append(f"missing keys: {_list_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_list_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_list_keys(mismatched)}")
    if problems:
        raise WeightsError(f"{path}: weights do not fit {type(model).__name__}: " + "; ".join(problems))
