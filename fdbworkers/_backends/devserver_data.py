"""The dev server's data file: its format, and an atomic write (a temporary file in the
same folder, fsync, rename). :class:`~fdbworkers._backends.devserver.DevServer` loads it
at start and saves it periodically and at shutdown (see that module's docstring).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Final

import msgpack

from .._errors import ConfigError

__all__ = ["DATA_FORMAT", "check_data_path", "load_data_file", "save_data_file"]

#: The ``format`` field of a data file.
DATA_FORMAT: Final = "fdbworkers-devserver-data"
DATA_FORMAT_VERSION: Final = 1


# --------------------------------------------------------------------------------------
# Persistence (pure file format + atomic write)
# --------------------------------------------------------------------------------------


def save_data_file(path: Path, version: int, items: list[tuple[bytes, bytes]]) -> None:
    """Write a data file atomically: a temporary file in the same folder, fsync, rename,
    fsync of the folder (blocking: call it in a thread)."""
    body = msgpack.packb(
        {
            "format": DATA_FORMAT,
            "format_version": DATA_FORMAT_VERSION,
            "version": version,
            "items": [[k, v] for k, v in items],
        },
        use_bin_type=True,
    )
    folder = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def check_data_path(path: Path) -> None:
    """ConfigError unless the data file can be written where it is: its folder exists
    and is writable, and the path is not a folder (checked at start: otherwise every
    save would fail and every commit would be lost)."""
    folder = path.parent
    if path.is_dir():
        raise ConfigError(f"dev server data file {str(path)!r} is a folder")
    if not folder.is_dir():
        raise ConfigError(
            f"the folder of the dev server data file {str(path)!r} does not exist "
            f"({str(folder)!r}): create it first"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"the folder of the dev server data file {str(path)!r} is not writable")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(f"dev server data file {str(path)!r} is not readable and writable")


def load_data_file(path: Path) -> tuple[int, list[tuple[bytes, bytes]]]:
    """Read a data file: ``(last commit version, sorted key-values)``; ``(0, [])`` when
    the file does not exist. :class:`ConfigError` names the file when it is unusable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return 0, []
    except OSError as e:
        raise ConfigError(f"cannot read dev server data file {str(path)!r}: {e}") from None
    try:
        doc = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as e:
        raise ConfigError(
            f"dev server data file {str(path)!r} is not readable ({e}); move it away to "
            f"start with an empty database"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != DATA_FORMAT:
        raise ConfigError(f"{str(path)!r} is not a dev server data file")
    if doc.get("format_version") != DATA_FORMAT_VERSION:
        raise ConfigError(
            f"dev server data file {str(path)!r} has format version "
            f"{doc.get('format_version')!r}; this version reads {DATA_FORMAT_VERSION}"
        )
    version = doc.get("version")
    items = doc.get("items")
    if not isinstance(version, int) or version < 0 or not isinstance(items, list):
        raise ConfigError(f"dev server data file {str(path)!r} is damaged")
    out: list[tuple[bytes, bytes]] = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], bytes)
            or not isinstance(item[1], bytes)
        ):
            raise ConfigError(f"dev server data file {str(path)!r} is damaged")
        out.append((item[0], item[1]))
    return version, out
