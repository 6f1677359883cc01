"""Atomic, durable writes: a file or a directory either exists complete or not at all, even across a crash.

Used by the store (versions, aliases), the backbone converter and the training feature cache. The data goes to a
hidden temporary sibling, is fsynced, then renamed into place, and the parent directory is fsynced so the rename
itself survives a power loss.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's entry list must be synced for a rename to be durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file, which then replaces `path` (an existing file is replaced)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    write_file(path, write)


def write_dir(target: Path, fill: Callable[[Path], None]) -> None:
    """`fill(tmp)` writes a temporary directory, which is then renamed to `target`. Raises FileExistsError when
    `target` exists (e.g. a concurrent writer got there first); the temporary directory never stays behind."""
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        fill(tmp)
        for p in tmp.iterdir():
            fsync_path(p)
        fsync_path(tmp)
        try:
            os.rename(tmp, target)  # atomic; fails when the target exists
        except OSError as e:
            raise FileExistsError(f"{target} already exists") from e
        fsync_path(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
