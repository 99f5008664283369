"""The package's error type: bad input, or a machine that cannot do what was asked, never a bug.

Every tritonsagan command prints such an error as one line, `error: <message>`, and exits 1 (see
tritonsagan.cli). Each subclass is also the built-in exception it refines (ValueError, OSError...),
so Python callers can catch either.
"""


class TritonsaganError(Exception):
    """An error whose message says what is wrong and what to do, with no traceback needed."""


class ConfigError(TritonsaganError, ValueError):
    """A setting, flag or config file that cannot work (names the setting)."""
