"""Safetensors reading and atomic writing, with errors that name the file and what is wrong.

Weights and checkpoints are only ever read from safetensors (never pickle). Every write goes to a
temporary file in the same folder, is fsynced, then renamed over the target, so a crash mid-write
leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from .errors import TritonsaganError

SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024  # the format's own cap on the JSON header


class WeightsError(TritonsaganError, ValueError):
    """A weights or checkpoint file that cannot be used: foreign, truncated, or mismatched."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a fsynced temporary file and an atomic rename. The file gets
    the permissions the umask gives any new file; an OSError (e.g. a full disk) names the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno is None:
            raise OSError(f"{path}: {err}") from err
        raise OSError(err.errno, err.strerror, str(path)) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


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
            raise WeightsError(f"{path}: truncated safetensors file (header needs {8 + header_len} bytes, file has {size})")
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


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load every tensor of a safetensors file plus its string metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    metadata = _check_safetensors_layout(path)
    try:
        tensors = load_file(path, device=str(device))
    except Exception as err:  # safetensors raises its own error types; name the file
        raise WeightsError(f"{path}: unreadable safetensors file ({err})") from None
    return tensors, metadata
