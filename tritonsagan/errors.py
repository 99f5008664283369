"""The package's error type: bad input, or a machine that cannot do what was asked, never a bug.

Every tritonsagan command prints such an error as one line, `error: <message>`, and exits with its
`exit_code` (1 unless the error says otherwise; see tritonsagan.cli). Each subclass is also the
built-in exception it refines (ValueError, OSError...), so Python callers can catch either.
"""


class TritonsaganError(Exception):
    """An error whose message says what is wrong and what to do, with no traceback needed."""

    exit_code = 1  # what the command returns after printing it


class ConfigError(TritonsaganError, ValueError):
    """A setting, flag or config file that cannot work (names the setting)."""
