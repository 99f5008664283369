"""Dataclass configs and their command lines: every field is a flag, `--config FILE` fills the rest.

Precedence: the dataclass defaults, then the JSON or TOML file, then the flags given. A field is
declared with `config_field(default, help, ...)`; its annotation gives the flag's type (bool: --x and
--no-x; `bool | None`: None decides from the device; `T | None`: the flag is optional), and its
metadata may give a parser (`parse`), `nargs`, `choices`, `positional`, `required`, or the name of a
required group of which exactly one flag is given (`one_of`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from .errors import ConfigError

C = TypeVar("C")
REQUIRED = dataclasses.MISSING  # the default of a positional or required field


def config_field(default: Any, help: str, **metadata: Any) -> Any:
    """A config field: its default (REQUIRED for none), its help text, and how its flag parses (see the
    module's docstring)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def flag_name(name: str) -> str:
    """A config field's command-line flag: lr_g -> --lr-g."""
    return "--" + name.replace("_", "-")


def _without_none(kind: Any) -> Any:
    """int | None -> int; other annotations as they are."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        members = [k for k in typing.get_args(kind) if k is not type(None)]
        return members[0] if len(members) == 1 else kind
    return kind


def _value_kind(kind: Any) -> Any:
    """The class a field's value is an instance of: int | None -> int; list[int] -> list."""
    kind = _without_none(kind)
    return typing.get_origin(kind) or kind


def _flag_type(kind: Any) -> Any:
    """What a flag's argparse type makes of each word: list[str] (with nargs) -> str; int | None -> int."""
    value_kind = _value_kind(kind)
    if value_kind is list:
        return typing.get_args(_without_none(kind))[0]
    return value_kind


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per field, typed from the annotation, help from the field's metadata."""
    hints = get_type_hints(config_cls)
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in dataclasses.fields(config_cls):
        kind, meta = hints[f.name], f.metadata
        options: dict[str, Any] = {"help": field_help(f)}
        if kind is bool or kind == (bool | None):  # bool | None: None means "decide from the device"
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = meta.get("parse") or _flag_type(kind)
            options.update({key: meta[key] for key in ("nargs", "choices") if key in meta})
        if meta.get("positional"):
            parser.add_argument(f.name, **options)
            continue
        target: argparse._ActionsContainer = parser
        if "one_of" in meta:
            if meta["one_of"] not in groups:
                groups[meta["one_of"]] = parser.add_mutually_exclusive_group(required=True)
            target = groups[meta["one_of"]]
        elif meta.get("required"):
            options["required"] = True
        target.add_argument(flag_name(f.name), default=argparse.SUPPRESS, **options)


def field_help(f: dataclasses.Field) -> str:
    """A field's help with its default appended, unless the help already says what the default is
    (one decided by the device, or an empty string that stands for a fallback), or there is none (a
    required field, or None: not given)."""
    text = f.metadata.get("help", "")
    if not text:
        raise TypeError(f"config field {f.name} has no help text")  # every flag is explained
    if "default" in text or f.default is dataclasses.MISSING or f.default is None:
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


def build_config(config_cls: type[C], args: argparse.Namespace, upgrade: Callable[[dict], dict] | None = None) -> C:
    """Merge defaults, the --config file and the explicit flags into a config instance. `upgrade`
    renames what an earlier version's config file holds."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(read_config_file(args.config))
        if upgrade is not None:
            values = upgrade(values)
    field_names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - field_names)
    if unknown:
        raise ConfigError(f"--config {args.config}: unknown config keys: {', '.join(unknown)}")
    values.update({k: v for k, v in vars(args).items() if k in field_names})
    hints = get_type_hints(config_cls)
    for name, value in values.items():
        values[name] = _checked(name, hints[name], value)
    return config_cls(**values)


def _checked(name: str, kind: Any, value: Any) -> Any:
    """A config file's value as the field's type (an int where a float goes), or a ConfigError."""
    if value is None and type(None) in typing.get_args(kind):
        return value
    expected = _value_kind(kind)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        described = kind.__name__ if isinstance(kind, type) else str(kind)  # e.g. "bool | None"
        raise ConfigError(f"config key {name!r} must be {described}, got {value!r}")
    return value


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON or TOML file of config fields; flags given here override it")
