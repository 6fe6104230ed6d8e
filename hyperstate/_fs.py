"""File primitives over fsspec, each in one place: read a file, write one atomically,
fsync a directory, keep a relative path inside its folder, split a URL, checksum bytes.

Knows nothing of hyperstate's formats. fsspec is imported on first use so that
``import hyperstate`` stays fast.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Any

import xxhash

__all__ = [
    "CHECKSUM_PREFIX",
    "check_relpath",
    "checksum",
    "digest",
    "fsync_dir",
    "hasher",
    "is_checksum",
    "is_local",
    "read_bytes",
    "read_text",
    "split_url",
    "url_to_fs",
    "write_atomic",
]

CHECKSUM_PREFIX = "xxh3-64:"
"""How every checksum hyperstate records starts: ``xxh3-64:<16 hex digits>``."""

_CHECKSUM_RE = re.compile(r"xxh3-64:[0-9a-f]{16}")
_DRIVE_RE = re.compile(r"[A-Za-z]:")


def checksum(data: memoryview | bytes | bytearray) -> str:
    """The checksum of some bytes as recorded in refs and manifests.

    >>> checksum(b"")
    'xxh3-64:2d06800538d394c2'
    """
    return CHECKSUM_PREFIX + xxhash.xxh3_64_hexdigest(data)


def hasher() -> Any:
    """A streaming hasher of the same checksum: ``update(bytes)``, then :func:`digest`."""
    return xxhash.xxh3_64()


def digest(h: Any) -> str:
    """The recorded form of a :func:`hasher`'s checksum."""
    return CHECKSUM_PREFIX + str(h.hexdigest())


def is_checksum(text: object) -> bool:
    """Whether ``text`` is a checksum in the recorded form."""
    return isinstance(text, str) and _CHECKSUM_RE.fullmatch(text) is not None


def check_relpath(relpath: object) -> str:
    """``relpath`` if it names a file inside a folder: relative, ``/``-separated, no ``..``.

    Raises ``ValueError`` saying what is wrong otherwise (an absolute path, a URL, a
    backslash or NUL, an empty, ``.`` or ``..`` segment).

    >>> check_relpath("blobs/rank-00000.safetensors")
    'blobs/rank-00000.safetensors'
    """
    if not isinstance(relpath, str) or not relpath:
        raise ValueError(f"expected a relative file path, found {relpath!r}")
    if "\\" in relpath or "\x00" in relpath:
        raise ValueError(
            f"expected a path with '/' separators, found a backslash or NUL in {relpath!r}"
        )
    if (
        relpath.startswith("/")
        or os.path.isabs(relpath)
        or _DRIVE_RE.match(relpath)
        or "://" in relpath
    ):
        raise ValueError(f"expected a path relative to the checkpoint directory, found {relpath!r}")
    if any(part in ("", ".", "..") for part in relpath.split("/")):
        raise ValueError(
            f"expected a path that stays inside the checkpoint directory, found an empty, "
            f"'.' or '..' segment in {relpath!r}"
        )
    return relpath


def split_url(url: str) -> tuple[str, str]:
    """(folder, file name) of a local path or URL; a local folder is made absolute.

    >>> split_url("s3://bucket/run/state.ron")
    ('s3://bucket/run', 'state.ron')
    """
    if "://" in url:
        folder, _, name = url.rstrip("/").rpartition("/")
        return folder, name
    absolute = os.path.abspath(url)
    return os.path.dirname(absolute), os.path.basename(absolute)


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
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    """Make a local directory's entries (a new or renamed file) durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
