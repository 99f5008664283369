"""save_pretrained / from_pretrained: a model is `model.safetensors` plus `config.json`.

The config travels in the safetensors metadata too, so a lone weights file still rebuilds its
model. Loading never unpickles anything, and every failure names the file and the keys involved.

Why not huggingface_hub's PyTorchModelHubMixin, which writes the same two files: its from_pretrained
falls back to torch.load of a pickled pytorch_model.bin when a repository has no safetensors file,
it cannot rebuild a model from a lone .safetensors file, a mismatched file fails with torch's
load_state_dict message rather than one naming the file, and it would add a Hub client to a
package that never touches the network. A folder saved here uploads to the Hub as it is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import torch

from tritonsagan.atomic_write import atomic_write_json
from tritonsagan.weights_io import WeightsError, check_state_dict, load_safetensors, save_safetensors

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

M = TypeVar("M", bound="PretrainedMixin")


class PretrainedMixin:
    """For nn.Modules built from one config dataclass (`config_class`), kept as `self.config`."""

    config: Any
    config_class: type

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        config = {"model_type": type(self).__name__, **dataclasses.asdict(self.config)}
        metadata = {"format": "pt", "tritonsagan_config": json.dumps(config)}
        save_safetensors(directory / WEIGHTS_NAME, self.state_dict(), metadata)
        atomic_write_json(directory / CONFIG_NAME, config)
        return directory

    @classmethod
    def from_pretrained(cls: type[M], path: str | os.PathLike, device: str | torch.device = "cpu") -> M:
        """Rebuild from a save_pretrained directory or its model.safetensors file."""
        path = Path(path)
        weights = path / WEIGHTS_NAME if path.is_dir() else path
        if not weights.is_file():
            raise FileNotFoundError(f"{cls.__name__}.from_pretrained: no weights file at {weights}")
        tensors, metadata = load_safetensors(weights)
        config = _read_config(weights, metadata)
        model_type = config.pop("model_type", None)
        if model_type != cls.__name__:
            raise WeightsError(f"{weights}: holds a {model_type or 'foreign model'}, not a {cls.__name__}")
        try:
            model = cls(cls.config_class(**config))
        except (TypeError, ValueError) as err:
            raise WeightsError(f"{weights}: config does not fit {cls.__name__}: {err}") from None
        check_state_dict(weights, model, tensors)
        model.load_state_dict(tensors)
        return model.to(device)


def _read_config(weights: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """config.json beside the weights, else the copy in the safetensors metadata."""
    config_file = weights.parent / CONFIG_NAME
    if config_file.is_file():
        try:
            return json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise WeightsError(f"{config_file}: not valid JSON ({err})") from None
    if "tritonsagan_config" in metadata:
        return json.loads(metadata["tritonsagan_config"])
    raise WeightsError(f"{weights}: no {CONFIG_NAME} beside it and no tritonsagan config in its metadata")
