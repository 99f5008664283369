"""Training checkpoints: one safetensors file per save, written atomically, the last K kept.

A checkpoint holds G, D and G_ema (parameters and buffers), both optimisers' state tensors, the
step and the RNG states, all as tensors; everything else (optimiser hyper-parameters, the config)
is JSON in the file's metadata, mirrored in a .json file beside it for people to read. A SHA-256 of
the metadata and every tensor, written with them and checked on every read, tells a file changed on
disk (a flipped byte, a truncated copy) from a good one: a damaged checkpoint is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from .atomic_write import atomic_write_json
from .weights_io import WeightsError, check_state_dict, load_safetensors, read_safetensors_metadata, save_safetensors

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{7,})\.safetensors$")
CHECKPOINT_METADATA = "tritonsagan_checkpoint"  # the safetensors metadata key holding the JSON
CHECKSUM_METADATA = "tritonsagan_sha256"  # the metadata key of content_sha256(the JSON, the tensors)
DAMAGED_SUFFIX = ".damaged"  # what a checkpoint that fails its check is renamed with by set_aside


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:07d}.safetensors"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every finished checkpoint, oldest first (temporary files never match)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return sorted(found)


def _flatten_optimizer(prefix: str, state_dict: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Move the optimiser's state tensors into `tensors`; return the JSON-able rest."""
    plain_state: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{index}.{key}"] = value
            else:
                plain_state.setdefault(str(index), {})[key] = value
    return {"param_groups": state_dict["param_groups"], "plain_state": plain_state}


def _unflatten_optimizer(prefix: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(entry) for i, entry in meta["plain_state"].items()}
    for name, value in tensors.items():
        if name.startswith(prefix + ".state."):
            index, key = name[len(prefix) + len(".state.") :].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def content_sha256(meta_json: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a checkpoint's metadata JSON and of every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def write_checkpoint(
    path: Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rng_states: dict[str, torch.Tensor],
    extra: dict[str, Any],
) -> None:
    """One checkpoint file at `path` (atomically), with its metadata mirrored in a .json beside it."""
    tensors: dict[str, torch.Tensor] = {"step": torch.tensor(step, dtype=torch.int64)}
    for name, module in modules.items():
        tensors.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    meta: dict[str, Any] = {"step": step, "optimizers": {}, **extra}
    for name, optimizer in optimizers.items():
        meta["optimizers"][name] = _flatten_optimizer(name, optimizer.state_dict(), tensors)
    tensors.update({f"rng.{k}": v for k, v in rng_states.items()})
    meta_json = json.dumps(meta)
    save_safetensors(
        path, tensors, {CHECKPOINT_METADATA: meta_json, CHECKSUM_METADATA: content_sha256(meta_json, tensors)}
    )
    atomic_write_json(sidecar_path(path), meta)


def save_checkpoint(
    directory: Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rng_states: dict[str, torch.Tensor],
    extra: dict[str, Any],
    keep: int,
) -> Path:
    """step_XXXXXXX.safetensors in `directory`; older ones beyond the last `keep` are deleted."""
    path = checkpoint_path(directory, step)
    write_checkpoint(path, step, modules, optimizers, rng_states, extra)
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
        sidecar_path(old).unlink(missing_ok=True)
    return path


def sidecar_path(path: Path) -> Path:
    """The .json beside a checkpoint: its metadata, for people to read."""
    return path.with_suffix(".json")


def read_sidecar(path: Path) -> dict[str, Any]:
    return json.loads(sidecar_path(path).read_text())


def is_checkpoint(path: Path) -> bool:
    """Whether a safetensors file is a training checkpoint (from its header alone)."""
    return CHECKPOINT_METADATA in read_safetensors_metadata(path)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every tensor of a checkpoint file and its metadata, after checking them against their checksum."""
    tensors, metadata = load_safetensors(path)
    if CHECKPOINT_METADATA not in metadata:
        raise WeightsError(f"{path}: not a tritonsagan training checkpoint (no checkpoint metadata)")
    meta_json = metadata[CHECKPOINT_METADATA]
    if CHECKSUM_METADATA not in metadata:
        raise WeightsError(
            f"{path}: a checkpoint without its {CHECKSUM_METADATA} checksum, so it cannot be checked; was it written by tritonsagan?"
        )
    if content_sha256(meta_json, tensors) != metadata[CHECKSUM_METADATA]:
        raise WeightsError(f"{path}: damaged checkpoint (its contents no longer match the checksum written with them)")
    return tensors, json.loads(meta_json)


def tensors_under(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The tensors saved under `name.`, without that prefix: a module's state dict, or the RNG states."""
    prefix = name + "."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def restore_checkpoint(
    path: Path,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
) -> tuple[int, dict[str, torch.Tensor]]:
    """Restore modules and optimisers in place from what read_checkpoint(path) gave; (step, rng states)."""
    for name, module in modules.items():
        state = tensors_under(tensors, name)
        check_state_dict(path, module, state)
        module.load_state_dict(state)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(_unflatten_optimizer(name, meta["optimizers"][name], tensors))
    return int(tensors["step"]), tensors_under(tensors, "rng")


def load_checkpoint(
    path: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
    """Restore modules and optimisers in place; return (step, rng states, metadata)."""
    tensors, meta = read_checkpoint(path)
    step, rng = restore_checkpoint(path, tensors, meta, modules, optimizers)
    return step, rng, meta


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint (and its sidecar) out of the list of checkpoints, keeping it to look at."""
    damaged = path.with_name(path.name + DAMAGED_SUFFIX)
    path.replace(damaged)
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        sidecar.replace(sidecar.with_name(sidecar.name + DAMAGED_SUFFIX))
    return damaged


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1][1] if found else None
