"""Reading a file the user names, in bounded time and memory.

A path on the command line can name anything: a FIFO (whose open blocks until someone writes), ``/dev/zero``
(whose read never ends), a link to either, a file of many gigabytes. ``read_regular`` opens without
blocking, accepts only a regular file, refuses one over its size limit before reading it, and reads at most
that many bytes even if the file grows meanwhile. ``read_json`` adds JSON's own hazard: nesting so deep that
the decoder exhausts Python's stack. Every refusal is a one-line ``ValueError``.

Torch-free, so the CLI and the app can use it anywhere.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from tipcore.common.parsing import MAX_DEPTH, parse_data


def read_regular(path: str | os.PathLike, max_bytes: int, *, what: str = "file", follow_links: bool = True) -> bytes:
    """The bytes of the regular file at ``path``, at most ``max_bytes``; a symbolic link to one is followed
    unless ``follow_links`` is false (then the link itself is refused)."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow_links else os.O_NOFOLLOW)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ValueError(f"{what} not found: {path}") from None
    except PermissionError:
        raise ValueError(f"{what} is not readable: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise ValueError(f"{what} {path} is a symbolic link, not a regular file") from None
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)  # of what was opened, so a swap of the path after the check changes nothing
        if stat.S_ISDIR(info.st_mode):
            raise ValueError(f"{what} {path} is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{what} {path} is not a regular file but {_kind(info.st_mode)}; "
                             "give a file on disk")
        if info.st_size > max_bytes:  # refused before reading: the file may be huge
            raise ValueError(f"{what} {path} is too large: {info.st_size:,} bytes, limit {max_bytes:,}")
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while total <= max_bytes:  # one byte past the limit tells a file that grew from one at the limit
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if total > max_bytes:
        raise ValueError(f"{what} {path} is too large: over {max_bytes:,} bytes")
    return b"".join(chunks)


def read_json(path: str | os.PathLike, max_bytes: int, *, what: str = "JSON file") -> Any:
    """The JSON data of a regular file of at most ``max_bytes``, nested at most ``parsing.MAX_DEPTH`` deep;
    NaN and ±Infinity (which strict JSON has not, and this project never writes) are refused."""
    raw = read_regular(path, max_bytes, what=what)
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not UTF-8 text") from None
    except RecursionError:  # the decoder recurses per level: a file of ten thousand '[' exhausts the stack
        raise ValueError(f"{what} {path} nests deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:
        raise ValueError(f"{what} {path} {exc}") from None
    parse_data(Any, data, name=f"{what} {path}")  # nesting depth, and numbers like 1e400 that decode to inf
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"holds {name}, which is not a JSON number")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "something else"
