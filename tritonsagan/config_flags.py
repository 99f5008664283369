"""Dataclass configs and their command lines: every field is a flag, `--config FILE` fills the rest.

Precedence: the dataclass defaults, then the JSON or TOML file, then the flags given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from .errors import ConfigError

C = TypeVar("C")


def flag_name(name: str) -> str:
    """A config field's command-line flag: lr_g -> --lr-g."""
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per field, typed from the annotation, help from the field's metadata."""
    hints = get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        kind = hints[f.name]
        help_text = field_help(f)
        if kind is bool or kind == (bool | None):  # bool | None: None means "decide from the device"
            parser.add_argument(
                flag_name(f.name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            choices = f.metadata.get("choices")
            parser.add_argument(
                flag_name(f.name), type=kind, choices=choices, default=argparse.SUPPRESS, help=help_text
            )


def field_help(f: dataclasses.Field) -> str:
    """A field's help with its default appended, unless the help already says what the default is
    (one decided by the device, or an empty string that stands for a fallback)."""
    text = f.metadata.get("help", "")
    if not text:
        raise TypeError(f"config field {f.name} has no help text")  # every flag is explained
    if "default" in text:
        return text
    shown = on_off(f.default) if isinstance(f.default, bool) else f.default
    return f"{text} (default: {shown})"


def on_off(flag: bool) -> str:
    """A boolean setting as help texts and logs say it."""
    return "on" if flag else "off"


def read_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config: file not found: {file}")
    text = file.read_text()
    try:
        if file.suffix.lower() == ".toml":
            if sys.version_info < (3, 11):
                raise ConfigError(f"--config {file}: TOML configs need Python 3.11+ (use JSON)")
            import tomllib

            values = tomllib.loads(text)
        else:
            values = json.loads(text)
    except ValueError as err:  # JSONDecodeError and TOMLDecodeError are both ValueErrors
        raise ConfigError(f"--config {file}: cannot parse it: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(
            f'--config {file}: holds a JSON {type(values).__name__}, not an object of config fields like {{"steps": 1000}}'
        )
    return values


def build_config(config_cls: type[C], args: argparse.Namespace) -> C:
    """Merge defaults, the --config file and the explicit flags into a config instance."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(read_config_file(args.config))
    field_names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - field_names)
    if unknown:
        raise ConfigError(f"--config {args.config}: unknown config keys: {', '.join(unknown)}")
    values.update({k: v for k, v in vars(args).items() if k in field_names})
    hints = get_type_hints(config_cls)
    for name, value in values.items():
        kind = hints[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                f"config key {name!r} must be {getattr(kind, '__name__', kind)}, got {value!r}"
            )  # bool | None has no __name__
    return config_cls(**values)
