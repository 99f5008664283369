"""config_flags: a dataclass's fields of every kind as flags, and a config file filling them."""

import argparse
import json
from dataclasses import dataclass

import pytest

from tritonsagan.cli import parse_int_list
from tritonsagan.config_flags import REQUIRED, add_config_argument, add_config_flags, build_config, config_field
from tritonsagan.errors import ConfigError


@dataclass(kw_only=True)
class Example:
    src: str = config_field(REQUIRED, "where from", positional=True)
    names: list[str] = config_field(REQUIRED, "one or more names", nargs="+", required=True)
    n: int = config_field(3, "how many")
    scale: float = config_field(1.0, "how much")
    classes: list[int] | None = config_field(None, "class indices", parse=parse_int_list)
    out: str | None = config_field(None, "a file", one_of="target")
    out_dir: str | None = config_field(None, "a folder", one_of="target")
    flip: bool = config_field(False, "a switch")
    decide: bool | None = config_field(None, "a switch decided later when not given (default: decided)")


def _parse(*argv: str) -> Example:
    parser = argparse.ArgumentParser()
    add_config_argument(parser)
    add_config_flags(parser, Example)
    return build_config(Example, parser.parse_args(argv))


def test_fields_of_every_kind_become_flags():
    cfg = _parse("here", "--names", "a", "b", "--classes", "3,7", "--out", "x.png", "--flip", "--no-decide")
    assert cfg == Example(src="here", names=["a", "b"], classes=[3, 7], out="x.png", flip=True, decide=False)
    assert _parse("here", "--names", "a", "--out-dir", "d") == Example(src="here", names=["a"], out_dir="d")


@pytest.mark.parametrize(
    "argv, said",
    [
        (["here", "--out", "x.png"], "--names"),  # required
        (["--names", "a", "--out", "x.png"], "src"),  # positional
        (["here", "--names", "a"], "--out"),  # one of the group
        (["here", "--names", "a", "--out", "x.png", "--out-dir", "d"], "not allowed with"),
        (["here", "--names", "a", "--out", "x.png", "--classes", "3,x"], "comma-separated integers"),
    ],
)
def test_missing_and_malformed_flags_are_named(argv, said, capsys):
    with pytest.raises(SystemExit):
        _parse(*argv)
    assert said in capsys.readouterr().err


def test_a_config_file_fills_optional_list_and_float_fields(tmp_path):
    file = tmp_path / "config.json"
    file.write_text(json.dumps({"n": 5, "scale": 2, "classes": [1, 2], "decide": None}))
    cfg = _parse("here", "--names", "a", "--out", "x.png", "--config", str(file), "--n", "6")
    assert (cfg.n, cfg.scale, cfg.classes, cfg.decide) == (6, 2.0, [1, 2], None)  # the flag wins over the file
    assert isinstance(cfg.scale, float)


@pytest.mark.parametrize(
    "values, said",
    [
        ({"classes": "1,2"}, "config key 'classes' must be list[int] | None, got '1,2'"),
        ({"n": None}, "config key 'n' must be int, got None"),
        ({"n": True}, "config key 'n' must be int, got True"),
        ({"flip": "yes"}, "config key 'flip' must be bool, got 'yes'"),
        ({"colour": 1}, "unknown config keys: colour"),
    ],
)
def test_a_config_file_of_the_wrong_types_is_named(values, said, tmp_path):
    file = tmp_path / "config.json"
    file.write_text(json.dumps(values))
    with pytest.raises(ConfigError) as raised:
        _parse("here", "--names", "a", "--out", "x.png", "--config", str(file))
    assert said in str(raised.value)


def test_help_says_each_default_once_and_none_for_required_or_unset_fields():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Example)
    helps = {action.dest: action.help for action in parser._actions if action.dest != "help"}
    assert helps["n"] == "how many (default: 3)" and helps["flip"] == "a switch (default: off)"
    assert helps["names"] == "one or more names" and helps["classes"] == "class indices"
    assert helps["decide"] == "a switch decided later when not given (default: decided)"
