"""Files written atomically: to a temporary file in the same folder, fsynced, then renamed over the
target, so a crash mid-write leaves the previous file intact and readers never see half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"  # the temporary files are hidden: .<name>.<random>.tmp


def remove_temporary_files(folder: Path) -> list[Path]:
    """Delete the temporary files that processes killed mid-write left under `folder` (call it only
    while nothing else writes there); the paths removed."""
    stray = [p for p in folder.rglob(f".*{TEMPORARY_SUFFIX}") if p.is_file()]
    for path in stray:
        path.unlink(missing_ok=True)
    return stray


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a fsynced temporary file and an atomic rename. The file gets
    the permissions the umask gives any new file; an OSError (e.g. a full disk) names the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
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
