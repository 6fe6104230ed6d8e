"""File primitives over fsspec: read a file, write one atomically.

Knows nothing of hyperstate's formats. fsspec is imported on first use so that
``import hyperstate`` stays fast.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

__all__ = ["is_local", "read_bytes", "read_text", "url_to_fs", "write_atomic"]


def url_to_fs(path: str | os.PathLike[str]) -> tuple[Any, str]:
    """The fsspec filesystem and the path within it for a local path or URL."""
    import fsspec.core

    fs, fs_path = fsspec.core.url_to_fs(os.fspath(path))
    return fs, fs_path


def is_local(fs: Any) -> bool:
    """Whether ``fs`` is the local disk (where we fsync and rename ourselves)."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole content of a file at a local path or fsspec URL."""
    fs, fs_path = url_to_fs(path)
    data: bytes = fs.cat_file(fs_path)
    return data


def read_text(path: str | os.PathLike[str]) -> str:
    """A UTF-8 text file at a local path or fsspec URL."""
    return read_bytes(path).decode("utf-8")


def write_atomic(path: str | os.PathLike[str], data: bytes, *more: bytes) -> None:
    """Write ``data`` (then ``more``) so that readers see the old file or the whole new one.

    On local disk: a temporary file in the same directory, fsync, rename over the
    target, fsync the directory. On object stores a single PUT is already atomic.
    ``more`` saves the caller a copy of a large ``data`` to append a few bytes.
    """
    fs, fs_path = url_to_fs(path)
    if not is_local(fs):
        parent = fs._parent(fs_path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(fs_path, b"".join((data, *more)) if more else data)
        return
    directory = os.path.dirname(fs_path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(fs_path)}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            for chunk in more:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fs_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
