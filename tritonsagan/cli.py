"""What every tritonsagan command shares: one error path, the --device flag, small argument parsers.

A command's `main(argv)` is `run_command(parser, run, argv)`: known errors (TritonsaganError, OSError
such as a full disk, ValueError from an argument) print `error: <message>` on stderr and return 1,
never a traceback; TRITONSAGAN_TRACEBACK=1 shows the traceback instead, for bug reports. Ctrl-C prints
one line too and returns 130.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import ConfigError, TritonsaganError

TRACEBACK_ENV = "TRITONSAGAN_TRACEBACK"
KNOWN_ERRORS = (TritonsaganError, OSError, ValueError)
INTERRUPTED_EXIT_CODE = 128 + 2  # the shell's code for a process ended by SIGINT


def run_command(
    parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], str | None], argv: list[str] | None
) -> int:
    """Parse argv, call run(args); print what it returns (e.g. "wrote x.png") on stderr; 0 or 1."""
    args = parser.parse_args(argv)
    try:
        message = run(args)
    except KNOWN_ERRORS as err:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 1)
    except KeyboardInterrupt:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    if message:
        print(message, file=sys.stderr)
    return 0


def resolve_device(requested: str) -> str:
    """--device: "auto" -> cuda when available, else cpu; cpu, cuda or cuda:N checked against this machine."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"--device {requested}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"--device {requested}: CUDA is not available ({build}); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ConfigError(f"--device {requested}: tritonsagan runs on cpu or cuda")
    return requested


def device_name(device: torch.device) -> str:
    """What reports and runs call the device: the GPU's name, or the CPU's model and its torch threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()}, {torch.get_num_threads()} threads"


def device_memory_bytes(device: torch.device) -> int:
    """The device's memory: the GPU's, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


DEVICE_DEFAULT = "auto"
DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda or cuda:N"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=DEVICE_DEFAULT, help=f"{DEVICE_HELP} (default: {DEVICE_DEFAULT})")


def positive_float(text: str) -> float:
    """An argparse type: a number above 0 (NaN refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parse_int_list(text: str) -> list[int]:
    """ "3,7,9" -> [3, 7, 9]."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
