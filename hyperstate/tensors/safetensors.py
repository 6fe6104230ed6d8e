"""Tensors and arrays in safetensors files: a streaming writer, a lazy reader, small refs.

A checkpoint keeps its tensors in blob files (``blobs/rank-00000.safetensors``) and
refers to each one from ``state.ron`` with a :class:`BlobRef`: a small frozen record of
file, entry key, dtype, shape and checksum. Blob files are plain safetensors files, so
``safetensors.safe_open`` reads them, but this module writes and reads them itself:

* :class:`BlobWriter` streams every entry from the tensor's own memory to the file (no
  second copy of the state: views are written as their storage, and only CUDA tensors,
  conjugate views and non-contiguous numpy arrays are copied, one at a time) and
  computes the xxh3-64 checksum of each entry as it goes.
* :class:`BlobReader` reads the header only, then each entry when it is asked for:
  zero-copy through ``mmap`` on local disk, one byte-range request per entry on remote
  fsspec storage. Every entry is checked against the checksum in its ref.

Tensors that share storage (tied weights, ``w`` and ``w.t()``) are stored once and
come back as views of one shared tensor, so they are still tied after loading.

>>> import torch, tempfile
>>> from hyperstate.tensors import BlobReader, BlobWriter
>>> directory = tempfile.mkdtemp()
>>> writer = BlobWriter(directory, "blobs/rank-00000.safetensors")
>>> w = torch.arange(6.0).reshape(2, 3)
>>> _ = writer.add("w", w), writer.add("w_t", w.t())
>>> ref_w, ref_wt = writer.write()
>>> reader = BlobReader(directory, "blobs/rank-00000.safetensors")
>>> w2, wt2 = reader.read(ref_w), reader.read(ref_wt)
>>> torch.equal(wt2, w.t())
True
>>> _ = w2.mul_(10)  # still tied: the transposed view sees the change
>>> wt2[2, 1].item()
50.0

Nothing here unpickles, evals or looks up names taken from a file: dtypes, devices and
paths from a ref or a header are checked against fixed tables before use.
"""

from __future__ import annotations

import ctypes
import difflib
import functools
import json
import math
import mmap
import os
import sys
import threading
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hyperstate import _fs, _gc
from hyperstate._fs import checksum
from hyperstate.errors import BlobError, StorageError
from hyperstate.tensors.dtypes import (
    ALIGN,
    CODES,
    COMPLEX,
    ITEMSIZE,
    NAME_OF_CODE,
    NUMPY_NAMES,
    STORED_AS,
    dtype_name,
    is_device_name,
    target_device,
    torch_dtype,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["CHECKSUMS", "BlobError", "BlobReader", "BlobRef", "BlobWriter", "checksum"]

CHECKSUMS = "__checksums__"
"""The entry, last in a blob file written with ``BlobWriter(checksums=True)``, that holds
the file's own table of its entries' checksums: JSON text ``{"key": "xxh3-64:...", ...}``
as ``uint8``. Written after the entries, once their checksums are known."""

# safetensors refuses larger headers; so do we, before reading one.
_MAX_HEADER = 100_000_000
# Entries at least this large are checksummed in a thread while the main thread writes
# them; below it the hand-off costs more than the hash.
_THREAD_HASH_MIN = 1 << 20
# Remote writes go in pieces of this size so a buffered fsspec file never holds a whole
# large tensor at once.
_REMOTE_CHUNK = 8 << 20
_KINDS = ("torch", "numpy")


@dataclass(frozen=True, slots=True)
class BlobRef:
    """Where one tensor or array lives: an entry of a blob file, and how to view it.

    The fields are plain strings, ints and tuples so the ref can be written into
    ``state.ron`` as it is. Refs are checked when built, so a hand-edited one that names
    an unknown dtype or a malformed shape fails here with a ``BlobError``.

    Attributes:
        file: the blob file, relative to the checkpoint directory, with ``/`` separators.
        key: the entry in that file.
        dtype: the torch dtype name without ``torch.`` (``"float32"``, ``"bfloat16"``).
        shape: the shape of the tensor.
        kind: ``"torch"`` or ``"numpy"``: what :meth:`BlobReader.read` gives back.
        stride: for a view into a storage shared with other refs, its stride in elements;
            ``None`` when the entry holds exactly this tensor, contiguous.
        offset: for such a view, its offset in elements from the start of the entry.
        checksum: ``"xxh3-64:<hex>"`` of the entry's bytes, or ``""`` before writing.
        device: the device the tensor was on when saved (``"cpu"``, ``"cuda:1"``).

    >>> BlobRef("blobs/rank-00000.safetensors", "net.weight", "float32", (4, 2)).shape
    (4, 2)
    """

    file: str
    key: str
    dtype: str
    shape: tuple[int, ...]
    kind: str = "torch"
    stride: tuple[int, ...] | None = None
    offset: int = 0
    checksum: str = ""
    device: str = "cpu"

    def __post_init__(self) -> None:
        def bad(msg: str) -> BlobError:
            key = self.key if isinstance(self.key, str) else None
            file = self.file if isinstance(self.file, str) else None
            return BlobError(f"invalid blob ref: {msg}", file, key)

        if not isinstance(self.file, str) or not isinstance(self.key, str):
            raise bad(f"expected file and key strings, found {self.file!r}, {self.key!r}")
        if self.dtype not in ITEMSIZE:
            raise bad(f"expected a dtype among {sorted(ITEMSIZE)}, found {self.dtype!r}")
        if self.kind not in _KINDS:
            raise bad(f"expected kind 'torch' or 'numpy', found {self.kind!r}")
        if self.kind == "numpy" and self.dtype not in NUMPY_NAMES:
            raise bad(f"numpy has no dtype {self.dtype!r}")
        object.__setattr__(self, "shape", _int_tuple(self.shape, "shape", bad))
        if self.stride is not None:
            stride = _int_tuple(self.stride, "stride", bad)
            if len(stride) != len(self.shape):
                raise bad(f"expected {len(self.shape)} strides for shape {self.shape}")
            object.__setattr__(self, "stride", stride)
            if self.kind == "numpy":
                raise bad("numpy refs cannot be strided views")
        if not _is_int(self.offset) or self.offset < 0:
            raise bad(f"expected a non-negative int offset, found {self.offset!r}")
        if self.stride is None and self.offset != 0:
            raise bad(f"offset {self.offset} given without a stride")
        if not isinstance(self.checksum, str) or not (
            self.checksum == "" or _fs.is_checksum(self.checksum)
        ):
            raise bad(f"expected checksum 'xxh3-64:<16 hex digits>', found {self.checksum!r}")
        if not is_device_name(self.device):
            raise bad(f"expected a device such as 'cpu' or 'cuda:0', found {self.device!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value: object, what: str, bad: Callable[[str], BlobError]) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(_is_int(v) and v >= 0 for v in value):
        raise bad(f"expected {what} as a tuple of non-negative ints, found {value!r}")
    return tuple(value)


# ---------------------------------------------------------------------------------------
# Paths


def _check_relative(file: object) -> str:
    """Refuse a blob path that could leave the checkpoint directory."""
    try:
        return _fs.check_relpath(file)
    except ValueError as e:
        raise BlobError(str(e), file if isinstance(file, str) else None) from None


def _resolve(directory: str | os.PathLike[str], file: str) -> tuple[Any, str, bool]:
    """The fsspec filesystem, the path on it, and whether it is the local disk."""
    base = os.fspath(directory)
    fs, path = _fs.url_to_fs(base.rstrip("/") + "/" + file)
    local = _fs.is_local(fs)
    if local:
        # A symlink inside the checkpoint must not lead out of it either.
        _, root = _fs.url_to_fs(base)
        real_root = os.path.realpath(root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise BlobError(
                f"expected a file inside {real_root}, found one that resolves to {real}", file
            )
    return fs, path, local


# ---------------------------------------------------------------------------------------
# Writing

# How an entry's bytes are produced when the file is written.
_STORAGE, _TENSOR, _ARRAY = 0, 1, 2
# Entries below _THREAD_HASH_MIN go to the file in batches: one writev() per batch
# (IOV_MAX buffers at most) instead of a write call and a thread hand-off per entry.
_BATCH_ENTRIES = 1024
_BATCH_BYTES = 1 << 20  # bounds the temporary copies (CUDA) a batch holds


class _Entries:
    """The entries of the file being written, one column per field.

    A writer may hold many thousands of small entries; columns cost a few pointers per
    entry where an object each would cost a hundred bytes and work for the collector.
    Entry ``i`` is row ``i`` of every column.
    """

    __slots__ = ("dtype", "first", "how", "nbytes", "ptr", "rank", "shape", "value", "views")

    def __init__(self) -> None:
        self.first: list[BlobRef] = []  # the ref of the value that made the entry
        self.dtype: list[str] = []  # torch dtype name of the entry itself
        self.shape: list[tuple[int, ...]] = []
        self.nbytes = array("q")
        self.ptr = array("Q")  # for _STORAGE: the storage address seen by add()
        self.how = bytearray()
        # Sort key of the file order: wider dtypes first, misfits last in their group.
        self.rank = bytearray()
        self.value: list[Any] = []  # the tensor, or array, whose bytes these are
        # Further views of an entry's storage, by entry: (offset, shape, stride, dtype) -> ref.
        self.views: dict[int, dict[tuple[Any, ...], BlobRef]] = {}

    def append(
        self,
        first: BlobRef,
        dtype: str,
        shape: tuple[int, ...],
        nbytes: int,
        how: int,
        value: Any,
        ptr: int = 0,
    ) -> int:
        align = ALIGN[dtype]
        self.first.append(first)
        self.dtype.append(dtype)
        self.shape.append(shape)
        self.nbytes.append(nbytes)
        self.ptr.append(ptr)
        self.how.append(how)
        self.rank.append(2 * (8 - align) + (nbytes % align != 0))
        self.value.append(value)
        return len(self.first) - 1

    def __len__(self) -> int:
        return len(self.first)

    def file_order(self) -> Sequence[int]:
        """Entry indices in file order: each entry then starts aligned (the header is
        padded to 8), as zero-copy views need."""
        rank, n = self.rank, len(self.rank)
        if not n or rank.count(rank[0]) == n:
            return range(n)
        return sorted(range(n), key=rank.__getitem__)


class BlobWriter:
    """Collects tensors and arrays, then writes them to one safetensors file.

    Args:
        directory: the checkpoint directory, a local path or an fsspec URL.
        file: the blob file relative to it, e.g. ``"blobs/rank-00000.safetensors"``.

    :meth:`add` only records the value and decides where it goes (no bytes are
    copied); :meth:`write` writes the file in one pass. The values must not change
    between the two. After writing, ``written_bytes`` holds the size of the file and
    ``file_checksum`` its xxh3-64 checksum.

    A tensor that owns its storage (parameters, optimizer moments) becomes one entry of
    its own dtype and shape. A view (``w.t()``, ``w[0]``, ``w[::2]``) is stored with its
    whole storage, as ``torch.save`` does, and its ref records stride and offset; every
    other view of that storage added later points into the same entry, so they are
    still tied after loading.

    >>> import numpy, tempfile
    >>> writer = BlobWriter(tempfile.mkdtemp(), "blobs/a.safetensors")
    >>> writer.add("x", numpy.zeros(3)).key
    'x'
    >>> [ref.checksum for ref in writer.write()]  # doctest: +ELLIPSIS
    ['xxh3-64:...']
    """

    def __init__(
        self, directory: str | os.PathLike[str], file: str, *, checksums: bool = False
    ) -> None:
        self.directory = os.fspath(directory)
        self.file = _check_relative(file)
        self.checksums = checksums  # write the CHECKSUMS entry
        self.written_bytes = 0
        #: ``"xxh3-64:<hex>"`` of the whole file, once written.
        self.file_checksum = ""
        self._entries = _Entries()
        # Per add() call, the ref returned and the entry it points into.
        self._refs: list[BlobRef] = []
        self._ref_entries = array("q")
        # Storage address (device, address off the CPU) -> the entry holding it.
        self._storages: dict[Any, int] = {}
        # Entries of one value each (arrays, empty or conjugate tensors), by identity.
        self._solo: dict[tuple[Any, ...], int] = {}
        # Values deduplicated by id() must stay alive while their id is a key.
        self._keepalive: list[Any] = []
        self._keys: set[str] = {"__metadata__", CHECKSUMS}
        # One tuple per distinct shape, shared by the refs: many tensors have the same.
        self._shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._written = False

    def add(self, key_hint: str, value: Any, *, exact: bool = False) -> BlobRef:
        """Register a ``torch.Tensor`` (any device) or ``numpy.ndarray`` for writing.

        Returns its ref, final except for the checksum, which :meth:`write` fills in.
        The entry key is ``key_hint``, with ``~1``, ``~2``... appended when taken. The
        same tensor (the same view of the same storage) added twice is stored once and
        gets the same ref. With ``exact``, a tensor gets an entry of its own holding just
        its elements (its dtype and shape, no stride), even when it is a view of a larger
        storage or shares one: the ref's key and shape are then known before writing.

        Raises:
            TypeError: ``value`` is neither a tensor nor an array.
            BlobError: its dtype or layout cannot be stored.
        """
        if self._written:
            raise BlobError("add() after write(): a writer writes its file once", self.file)
        if _is_tensor(value):
            entry, ref = self._add_tensor(key_hint, value, exact)
        elif _is_ndarray(value):
            entry, ref = self._add_array(key_hint, value)
        else:
            raise TypeError(
                f"expected a torch.Tensor or numpy.ndarray for {key_hint!r}, "
                f"found {type(value).__name__}"
            )
        self._refs.append(ref)
        self._ref_entries.append(entry)
        return ref

    def _add_tensor(self, hint: str, t: Any, exact: bool = False) -> tuple[int, BlobRef]:
        plain, strided = _plain_tensor_types()
        if type(t) not in plain or t.layout is not strided or t.is_quantized:
            raise BlobError(
                f"expected a plain dense tensor for {hint!r}, found {type(t).__name__} "
                f"with layout {t.layout}; convert it first (DTensor: .full_tensor() or "
                ".to_local(), sparse: .to_dense())",
                self.file,
            )
        dtype = dtype_name(t.dtype)
        if dtype not in ITEMSIZE:
            raise BlobError(f"cannot store {hint!r}: safetensors has no dtype {t.dtype}", self.file)
        if t.is_cpu:
            device = "cpu"
        elif t.is_meta:
            raise BlobError(f"cannot store {hint!r}: a meta tensor has no data", self.file)
        else:
            device = str(t.device)
        shape = tuple(t.shape)
        shape = self._shapes.setdefault(shape, shape)
        if exact:
            solo = ("exact", len(self._refs))
            return self._add_solo(solo, t, hint, dtype, shape, device, _TENSOR)
        numel = math.prod(shape)
        # Conjugate and negative views hold other values than their storage: they are
        # resolved when written, into an entry of their own. Only complex tensors have
        # a conjugate bit.
        storage = t.untyped_storage()
        # A view that repeats elements (``expand``, stride 0) is written as a copy: a
        # reader refuses views larger than their entry.
        if (
            numel == 0
            or t.is_neg()
            or (dtype in COMPLEX and t.is_conj())
            or numel * ITEMSIZE[dtype] > storage.nbytes()
        ):
            return self._add_solo(("solo", id(t)), t, hint, dtype, shape, device, _TENSOR)
        address = storage.data_ptr()
        where = address if device == "cpu" else (device, address)
        held = self._storages.get(where)
        if held is None:
            return self._add_storage(hint, t, dtype, shape, numel, device, where, storage.nbytes())
        # Another view of a storage already added (or the same tensor again).
        entries = self._entries
        first = entries.first[held]
        offset = t.storage_offset()
        if (
            first.dtype == dtype
            and first.shape == shape
            and offset == first.offset
            and (t.is_contiguous() if first.stride is None else t.stride() == first.stride)
        ):
            return held, first
        stride = t.stride()
        view = (offset, shape, stride, dtype)
        views = entries.views.get(held)
        known = views.get(view) if views is not None else None
        if known is not None:
            return held, known
        end = offset + 1
        for n, s in zip(shape, stride, strict=True):
            end += (n - 1) * s
        if end * ITEMSIZE[dtype] > entries.nbytes[held]:
            # torch.from_numpy storages can share an address and differ in size.
            return self._add_solo((where, *view), t, hint, dtype, shape, device, _TENSOR)
        ref = _ref(self.file, first.key, dtype, shape, "torch", stride, offset, device)
        if views is None:
            views = entries.views[held] = {}
        views[view] = ref
        return held, ref

    def _add_storage(
        self,
        hint: str,
        t: Any,
        dtype: str,
        shape: tuple[int, ...],
        numel: int,
        device: str,
        where: Any,
        nbytes: int,
    ) -> tuple[int, BlobRef]:
        """An entry holding a whole storage, first seen through ``t``."""
        key = self._unique_key(hint)
        itemsize = ITEMSIZE[dtype]
        offset = t.storage_offset()
        if offset == 0 and numel * itemsize == nbytes and t.is_contiguous():
            # The tensor is the whole storage: the entry is just this tensor.
            stored, extra = STORED_AS.get(dtype, (dtype, 0))
            entry_shape = (*shape, extra) if extra else shape
            ref = _ref(self.file, key, dtype, shape, "torch", None, 0, device)
        else:
            stored = dtype if dtype in CODES and nbytes % itemsize == 0 else "uint8"
            entry_shape = (nbytes // ITEMSIZE[stored],)
            ref = _ref(self.file, key, dtype, shape, "torch", t.stride(), offset, device)
        address = where if isinstance(where, int) else where[1]
        entry = self._entries.append(ref, stored, entry_shape, nbytes, _STORAGE, t, address)
        self._storages[where] = entry
        return entry, ref

    def _add_solo(
        self,
        identity: tuple[Any, ...],
        value: Any,
        hint: str,
        dtype: str,
        shape: tuple[int, ...],
        device: str,
        how: int,
    ) -> tuple[int, BlobRef]:
        """An entry holding just this tensor or array, made contiguous when written."""
        known = self._solo.get(identity)
        if known is not None:
            return known, self._entries.first[known]
        if identity[0] == "solo":
            self._keepalive.append(value)
        key = self._unique_key(hint)
        stored, extra = STORED_AS.get(dtype, (dtype, 0))
        nbytes = math.prod(shape) * ITEMSIZE[dtype]
        entry_shape = (*shape, extra) if extra else shape
        kind = "numpy" if how == _ARRAY else "torch"
        ref = _ref(self.file, key, dtype, shape, kind, None, 0, device)
        entry = self._entries.append(ref, stored, entry_shape, nbytes, how, value)
        self._solo[identity] = entry
        return entry, ref

    def _add_array(self, hint: str, value: Any) -> tuple[int, BlobRef]:
        dtype = value.dtype.name
        if dtype not in NUMPY_NAMES:
            raise BlobError(
                f"cannot store {hint!r}: expected a numpy dtype among {sorted(NUMPY_NAMES)}, "
                f"found {value.dtype}",
                self.file,
            )
        shape = tuple(value.shape)
        shape = self._shapes.setdefault(shape, shape)
        if value.size == 0:
            identity: tuple[Any, ...] = ("solo", id(value))
        else:
            address = value.__array_interface__["data"][0]
            identity = ("numpy", address, shape, value.strides, value.dtype.str)
        return self._add_solo(identity, value, hint, dtype, shape, "cpu", _ARRAY)

    def _unique_key(self, hint: str) -> str:
        keys = self._keys
        if type(hint) is str and hint and hint not in keys and hint.isprintable():
            keys.add(hint)
            return hint
        base = str(hint)
        if not base.isprintable():
            base = "".join(c if c.isprintable() else "_" for c in base)
        base = base or "tensor"
        key, n = base, 0
        while key in keys:
            n += 1
            key = f"{base}~{n}"
        keys.add(key)
        return key

    def write(self) -> list[BlobRef]:
        """Write the file and return the final refs, one per :meth:`add` call, in order.

        They equal the refs ``add`` returned, with the checksums filled in. Entries are
        streamed from each tensor's memory and checksummed as they are written. On local
        disk the file (and its directory entry) is fsync'd before this returns; on other
        fsspec storage it is uploaded through ``fs.open(path, "wb")``. The caller marks
        the checkpoint committed.
        """
        if self._written:
            raise BlobError("write() called twice", self.file)
        self._written = True
        # Only add() needed these; free them before the header takes their place.
        self._storages.clear()
        self._solo.clear()
        self._keys.clear()
        self._shapes.clear()
        entries = self._entries
        order = entries.file_order()
        sums = [""] * len(entries)
        fs, path, local = _resolve(self.directory, self.file)
        try:
            if local:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb", buffering=0) as f:
                    fd = f.fileno()
                    self._stream(functools.partial(_writev, fd), order, sums)
                    os.fsync(fd)
                _fs.fsync_dir(os.path.dirname(path))
            else:
                parent = fs._parent(path)
                if parent:
                    fs.makedirs(parent, exist_ok=True)
                with fs.open(path, "wb") as f:
                    write = _chunked(f.write)
                    self._stream(functools.partial(_each, write), order, sums)
        except OSError as e:  # a full disk, a directory removed under us, a lost bucket
            url = f"{self.directory.rstrip('/')}/{self.file}"
            raise StorageError("write", url, str(e) or type(e).__name__) from e
        finally:
            # The writer no longer needs the tensors; let the caller free them.
            entries.value.clear()
            entries.first.clear()
            entries.views.clear()
            self._keepalive.clear()
        # New refs replace the old ones one by one, so both sets are never all alive.
        refs, ref_entries = self._refs, self._ref_entries
        out: list[BlobRef] = []
        while refs:
            out.append(_with_checksum(refs.pop(), sums[ref_entries.pop()]))
        out.reverse()
        return out

    def _stream(
        self, write_batch: Callable[[list[Any], int], None], order: Sequence[int], sums: list[str]
    ) -> None:
        """Write the header and each entry, checksumming the entries into ``sums``.

        Small entries are hashed here and written in batches; big ones are hashed in a
        thread while this one writes them. The file as a whole is hashed in order too
        (``file_checksum``), so that a checkpoint manifest can list the file without
        reading it back.
        """
        whole = _fs.hasher()
        sizes = self._entries.nbytes
        types: dict[int, Any] = {}  # ctypes array types by size, for views of CPU memory
        table = _table_size(self._entries, order) if self.checksums else 0
        header = _header(self._entries, order, table)
        size = len(header) + sum(sizes) + table
        batch: list[Any] = [header]
        batch_bytes = len(header)
        del header  # freed once written

        def flush(last: Future[Any] | None) -> None:
            if last is not None:
                last.result()  # the file hash takes the bytes in file order
            for data in batch:
                whole.update(data)
            write_batch(batch, batch_bytes)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hyperstate-xxh3") as pool:
            pending: list[tuple[int, Future[str]]] = []
            last: Future[Any] | None = None  # the thread's latest update of the file hash
            for i in order:
                nbytes = sizes[i]
                if nbytes < _THREAD_HASH_MIN:
                    data = self._bytes_of(i, types)[0]
                    sums[i] = checksum(data)
                    batch.append(data)
                    batch_bytes += nbytes
                    if len(batch) >= _BATCH_ENTRIES or batch_bytes >= _BATCH_BYTES:
                        flush(last)
                        last, batch, batch_bytes = None, [], 0
                    continue
                if batch:
                    flush(last)
                    last, batch, batch_bytes = None, [], 0
                data, copied = self._bytes_of(i, types)
                pending.append((i, pool.submit(checksum, data)))
                # One worker runs tasks in order: the file hash sees the bytes as written.
                last = pool.submit(whole.update, data)
                write_batch([data], nbytes)
                if copied:
                    last.result()  # a temporary copy is not kept waiting for its hashes
                del data
            if batch:
                flush(last)
            for i, future in pending:
                sums[i] = future.result()
        if table:  # after the entries: their checksums are known now
            text = _table(self._entries, order, sums)
            if len(text) != table:
                raise BlobError(f"expected a {table}-byte {CHECKSUMS}, made {len(text)}", self.file)
            whole.update(text)
            write_batch([text], table)
        self.file_checksum = _fs.digest(whole)
        self.written_bytes = size

    def _bytes_of(self, i: int, types: dict[int, Any]) -> tuple[Any, bool]:
        """Entry ``i``'s bytes (a buffer), and whether they are a temporary copy."""
        entries = self._entries
        value, nbytes = entries.value[i], entries.nbytes[i]
        if entries.how[i] == _STORAGE:
            ptr = entries.ptr[i]
            storage = value.untyped_storage()
            if storage.data_ptr() != ptr or storage.nbytes() != nbytes:
                raise BlobError(
                    f"expected a storage of {nbytes} bytes at {ptr:#x}, found "
                    f"{storage.nbytes()} bytes at {storage.data_ptr():#x}: the tensor was "
                    "resized between add() and write()",
                    self.file,
                    entries.first[i].key,
                )
            if value.is_cpu:
                # A view of memory that the entry's tensor keeps alive until write()
                # returns; cheaper per entry than any torch or numpy wrapper.
                chars = types.get(nbytes)
                if chars is None:
                    chars = types[nbytes] = ctypes.c_char * nbytes
                return chars.from_address(ptr), False
            return _storage_bytes(storage, value.device)
        how = entries.how[i]
        data, copied = _tensor_bytes(value) if how == _TENSOR else _array_bytes(value)
        if len(data) != nbytes:
            raise BlobError(
                f"expected {nbytes} bytes, found {len(data)}: the value changed between "
                "add() and write()",
                self.file,
                entries.first[i].key,
            )
        return data, copied


def _ref(
    file: str,
    key: str,
    dtype: str,
    shape: tuple[int, ...],
    kind: str,
    stride: tuple[int, ...] | None,
    offset: int,
    device: str,
    checksum: str = "",
) -> BlobRef:
    """A ref from values the writer made itself, skipping the checks meant for file data.

    A writer makes one or two refs per tensor, so this sets the slots directly.
    """
    ref = object.__new__(BlobRef)
    _SET_FILE(ref, file)
    _SET_KEY(ref, key)
    _SET_DTYPE(ref, dtype)
    _SET_SHAPE(ref, shape)
    _SET_KIND(ref, kind)
    _SET_STRIDE(ref, stride)
    _SET_OFFSET(ref, offset)
    _SET_CHECKSUM(ref, checksum)
    _SET_DEVICE(ref, device)
    return ref


_SET_FILE, _SET_KEY, _SET_DTYPE, _SET_SHAPE, _SET_KIND = (
    BlobRef.__dict__[name].__set__ for name in ("file", "key", "dtype", "shape", "kind")
)
_SET_STRIDE, _SET_OFFSET, _SET_CHECKSUM, _SET_DEVICE = (
    BlobRef.__dict__[name].__set__ for name in ("stride", "offset", "checksum", "device")
)


def _with_checksum(ref: BlobRef, checksum: str) -> BlobRef:
    return _ref(
        ref.file,
        ref.key,
        ref.dtype,
        ref.shape,
        ref.kind,
        ref.stride,
        ref.offset,
        ref.device,
        checksum,
    )


def _table_size(entries: _Entries, order: Sequence[int]) -> int:
    """The bytes of the :data:`CHECKSUMS` entry that :func:`_table` makes (every checksum
    has the same length, so it is known before any is computed)."""
    quote = json.encoder.encode_basestring_ascii
    item = len(_fs.checksum(b"")) + 3  # :"<checksum>"
    return 1 + sum(len(quote(entries.first[i].key)) + item + 1 for i in order) if order else 2


def _table(entries: _Entries, order: Sequence[int], sums: list[str]) -> bytes:
    """The :data:`CHECKSUMS` entry: each entry's key and checksum, in file order."""
    quote = json.encoder.encode_basestring_ascii
    items = ",".join(f'{quote(entries.first[i].key)}:"{sums[i]}"' for i in order)
    return ("{" + items + "}").encode("ascii")


def _header(entries: _Entries, order: Sequence[int], table: int = 0) -> bytearray:
    """The 8-byte header size and the JSON header, padded with spaces to 8 bytes; with a
    :data:`CHECKSUMS` entry of ``table`` bytes after the others when ``table`` > 0.

    Built in one growing buffer: with many small tensors the header is a sizable part
    of what a save holds in memory, and joining pieces would hold it several times.
    """
    out = bytearray(8)
    out += b'{"__metadata__":{"format":"pt"}'
    position = 0
    quote = json.encoder.encode_basestring_ascii
    first, dtypes, shapes, sizes = entries.first, entries.dtype, entries.shape, entries.nbytes
    # What comes between an entry's key and its offsets, by (dtype, shape): tensors of
    # one layer, or of one optimizer moment, share it.
    middles: dict[tuple[str, tuple[int, ...]], str] = {}
    for i in order:
        kind = (dtypes[i], shapes[i])
        middle = middles.get(kind)
        if middle is None:
            dims = ",".join(map(str, kind[1]))
            middle = middles[kind] = f'"dtype":"{CODES[kind[0]]}","shape":[{dims}],'
        end = position + sizes[i]
        out += f',{quote(first[i].key)}:{{{middle}"data_offsets":[{position},{end}]}}'.encode()
        position = end
    if table:
        out += f',"{CHECKSUMS}":{{"dtype":"U8","shape":[{table}],'.encode()
        out += f'"data_offsets":[{position},{position + table}]}}'.encode()
    out += b"}"
    out += b" " * (-len(out) % 8)
    out[:8] = (len(out) - 8).to_bytes(8, "little")
    return out


def _writev(fd: int, batch: list[Any], nbytes: int) -> None:
    """Write the ``nbytes`` of the buffers in ``batch`` to ``fd``, in one system call."""
    written = os.writev(fd, batch)
    if written == nbytes:
        return
    for data in batch:  # a short write (a signal, a full disk): the rest piece by piece
        view = memoryview(data).cast("B")
        if written >= len(view):
            written -= len(view)
            continue
        view = view[written:]
        written = 0
        while view:
            view = view[os.write(fd, view) :]


def _each(write: Callable[[Any], None], batch: list[Any], nbytes: int) -> None:
    for data in batch:
        write(data)


@functools.cache
def _plain_tensor_types() -> tuple[frozenset[type], Any]:
    """The tensor classes stored as they are, and ``torch.strided``."""
    import torch

    return frozenset({torch.Tensor, torch.nn.Parameter}), torch.strided


def _tensor_bytes(t: Any) -> tuple[memoryview, bool]:
    import torch

    t = t.detach()
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    # On the CPU, to(memory_format=...) returns a strided view unchanged: contiguous() copies.
    c = t.contiguous() if t.is_cpu else t.to(device="cpu", memory_format=torch.contiguous_format)
    copied = not t.is_cpu or c.data_ptr() != t.data_ptr()
    data: memoryview = c.reshape(-1).view(torch.uint8).numpy().data
    return data, copied


def _array_bytes(a: Any) -> tuple[memoryview, bool]:
    import numpy as np

    # Safetensors is little-endian; big-endian arrays are converted while written.
    c = np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C")
    data: memoryview = c.reshape(-1).view(np.uint8).data
    return data, not np.shares_memory(c, a)


def _storage_bytes(storage: Any, device: Any) -> tuple[memoryview, bool]:
    import torch

    flat = torch.empty(0, dtype=torch.uint8, device=device)
    flat.set_(storage)
    data: memoryview = flat.cpu().numpy().data
    return data, True


def _chunked(write: Callable[[Any], object]) -> Callable[[Any], None]:
    def chunked(data: Any) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _REMOTE_CHUNK):
            write(view[start : start + _REMOTE_CHUNK])

    return chunked


def _is_tensor(value: object) -> bool:
    # torch is already imported wherever a tensor exists; never import it just to check.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _is_ndarray(value: object) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.ndarray)


# ---------------------------------------------------------------------------------------
# Reading


class _Info:
    """One entry of a blob file's header, checked."""

    __slots__ = ("dtype", "end", "shape", "start")

    def __init__(self, dtype: str, shape: tuple[int, ...], start: int, end: int) -> None:
        self.dtype = dtype
        self.shape = shape
        self.start = start  # absolute offsets in the file
        self.end = end


class BlobReader:
    """Reads entries of one blob file on demand, checking each against its ref's checksum.

    Args:
        directory: the checkpoint directory, a local path or an fsspec URL.
        file: the blob file relative to it. Absolute paths, ``..`` segments and
            symlinks that lead outside ``directory`` are refused with a ``BlobError``.
        verify: check each entry's bytes against the checksum in its ref (xxh3-64,
            several GB/s). Turn off only for data you already trust.
        file_checksum: the checksum of the whole file (as ``COMMITTED`` records it): a
            ref without a checksum of its own is checked against it, once; without it,
            such a ref is refused when ``verify`` is on.

    Nothing is read until it is needed: first the header (checked: its size, every
    entry's dtype, shape and offsets, entries tiling the data exactly as safetensors
    requires), then each entry at its first :meth:`read`. Local files are
    memory-mapped copy-on-write: tensors are views of the mapping (no copy), stay valid
    after the reader is gone, and writing to them never changes the file. Remote files
    are read one entry's byte range at a time.

    The reader returns the same object each time the same ref is read, and builds all
    views of one entry on one storage, so tied tensors stay tied. It holds what it has
    read until it is closed or dropped.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        file: str,
        verify: bool = True,
        *,
        file_checksum: str | None = None,
    ) -> None:
        self.directory = os.fspath(directory)
        self.file = _check_relative(file)
        self.verify = verify
        self.file_checksum = file_checksum
        self._file_verified = False
        self._fs, self._path, self._local = _resolve(self.directory, self.file)
        self._lock = threading.RLock()
        self._entries: dict[str, _Info] | None = None
        self._metadata: dict[str, str] = {}
        # The header as read, before it is parsed: (JSON text, where the data starts,
        # file size).
        self._text: tuple[bytes, int, int] | None = None
        self._mmap: mmap.mmap | None = None
        self._view: memoryview | None = None  # of the whole mapping, for checksums
        self._fetched: dict[str, bytearray] = {}  # remote entries, by key
        self._digests: dict[str, str] = {}  # checksums computed so far, by key
        self._sums: dict[str, str] | None = None  # the file's CHECKSUMS table, once read
        self._bases: dict[tuple[str, str], Any] = {}  # (key, device) -> entry's storage
        self._results: dict[tuple[Any, ...], Any] = {}

    def __repr__(self) -> str:
        return f"BlobReader({self.directory!r}, {self.file!r}, verify={self.verify})"

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop this reader's mapping and caches; tensors already read stay valid."""
        with self._lock:
            self._fetched.clear()
            self._bases.clear()
            self._results.clear()
            if self._view is not None:
                self._view.release()
            # Never mmap.close(): torch.frombuffer keeps the mmap object alive but not a
            # buffer export, so closing would unmap memory that tensors still use. The
            # mapping goes when the last tensor viewing it does.
            self._view = self._mmap = None
            self._entries = self._text = self._sums = None

    def keys(self) -> list[str]:
        """The entry names in the file, in file order."""
        entries = self._header()
        return sorted(entries, key=lambda key: entries[key].start)

    def metadata(self) -> dict[str, str]:
        """The file's ``__metadata__`` table (string to string)."""
        self._header()
        return dict(self._metadata)

    def checksum_of(self, key: str) -> str:
        """The checksum of entry ``key`` in the file's own :data:`CHECKSUMS` table; ``""``
        when the file has no table (a ref made with it is then checked against the whole
        file's checksum) or the table does not list ``key``.

        The table is read once, bounded by the header's limit, and checked whole: JSON
        mapping entries of this file to checksums. It only says what bytes an entry must
        hash to; which bytes, their dtype and shape come from the header and the ref.

        Raises:
            BlobError: the table is malformed.
        """
        with self._lock:
            sums = self._sums
            if sums is None:
                sums = self._sums = self._read_sums()
            return sums.get(key, "")

    def _read_sums(self) -> dict[str, str]:
        entries = self._header()
        info = entries.get(CHECKSUMS)
        if info is None:
            return {}

        def bad(found: str) -> BlobError:
            return BlobError(
                f"expected a table of entry checksums (JSON as uint8), found {found}",
                self.file,
                CHECKSUMS,
            )

        nbytes = info.end - info.start
        if info.dtype != "uint8" or len(info.shape) != 1:
            raise bad(f"an entry of {CODES[info.dtype]} {list(info.shape)}")
        if nbytes > _MAX_HEADER:
            raise bad(f"{nbytes} bytes (at most {_MAX_HEADER})")
        buffer, start = self._buffer(CHECKSUMS, info)
        try:
            with _gc.paused():
                sums = json.loads(bytes(memoryview(buffer)[start : start + nbytes]))
        except (ValueError, RecursionError) as exc:
            raise bad(f"invalid JSON ({exc})") from None
        if not isinstance(sums, dict):
            raise bad(type(sums).__name__)
        for key, value in sums.items():
            if key not in entries or key == CHECKSUMS:
                raise bad(f"a checksum for {key!r}, which is no entry of the file")
            if not _fs.is_checksum(value):
                raise bad(f"{value!r} for {key!r}")
        return sums

    def read(
        self, ref: BlobRef, map_location: str | torch.device | None = None
    ) -> torch.Tensor | np.ndarray[Any, Any]:
        """The tensor (or numpy array, for ``kind="numpy"``) that ``ref`` points to.

        Args:
            ref: a ref into this reader's file.
            map_location: the device to put a tensor on, as in ``torch.load``. By
                default a tensor goes back to the device it was saved from
                (``ref.device``) when that device exists here, else to the CPU. Ignored
                for numpy arrays.

        Raises:
            BlobError: the ref names another file or a missing entry, does not fit the
                entry, or the entry's bytes do not match the ref's checksum.
        """
        if ref.file != self.file:
            raise BlobError(
                f"expected a ref into {self.file!r}, found one into {ref.file!r}",
                self.file,
                ref.key,
            )
        with self._lock:
            info = self._header().get(ref.key)
            if info is None:
                entries = self._header()
                near = difflib.get_close_matches(ref.key, list(entries), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise BlobError(
                    f"expected an entry {ref.key!r}, found no such entry{hint}",
                    self.file,
                    ref.key,
                )
            if ref.kind == "numpy":
                device: Any = None
                place = "numpy"
            else:
                device = target_device(ref.device, map_location)
                place = str(device)
            found_key = (ref.key, ref.dtype, ref.shape, ref.stride, ref.offset, place)
            found = self._results.get(found_key)
            if found is None:
                self._check_fit(ref, info)
            # Every read checks its ref's checksum (computed once per entry), so a ref
            # with a wrong one never passes on the strength of an earlier read.
            self._verify(ref, info)
            if found is None:
                found = (
                    self._array(ref, info) if device is None else self._tensor(ref, info, device)
                )
                self._results[found_key] = found
            return found

    # -- header ----------------------------------------------------------------------

    def _header(self) -> dict[str, _Info]:
        entries = self._entries
        if entries is None:
            with self._lock:
                if self._entries is None:
                    text, data_start, size = self._raw_header()
                    self._entries = self._parse_header(text, data_start, size)
                entries = self._entries
        return entries

    def _raw_header(self) -> tuple[bytes, int, int]:
        """The JSON header, where the data starts and the file size; maps a local file."""
        if self._text is not None:
            return self._text
        if self._local:
            try:
                # A regular file only: a FIFO or a device would block or never end.
                f = _fs.open_regular(self._path, self.file)
            except FileNotFoundError:
                raise BlobError("the blob file does not exist", self.file) from None
            except StorageError as e:
                raise BlobError(e.reason, self.file) from None
            with f:
                size = os.fstat(f.fileno()).st_size
                length = self._header_length(f.read(8), size)
                text = f.read(length)
                if self._mmap is None:
                    # Copy-on-write: tensors can be written to; the file never changes.
                    self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
                    self._view = memoryview(self._mmap)
        else:
            try:
                size = int(self._fs.size(self._path))
            except FileNotFoundError:
                raise BlobError("the blob file does not exist", self.file) from None
            # By keyword: s3fs's cat_file takes version_id as its second argument.
            first = self._fs.cat_file(self._path, start=0, end=8) if size >= 8 else b""
            length = self._header_length(first, size)
            text = self._fs.cat_file(self._path, start=8, end=8 + length)
        self._text = (text, 8 + length, size)
        return self._text

    def _header_length(self, first: bytes, size: int) -> int:
        if len(first) < 8:
            raise BlobError(
                f"expected at least 8 bytes (the header size), found a file of {size} bytes "
                "(truncated?)",
                self.file,
            )
        length = int.from_bytes(first[:8], "little")
        if length > _MAX_HEADER:
            raise BlobError(
                f"expected a header of at most {_MAX_HEADER} bytes, found a header size of "
                f"{length} (not a safetensors file, or corrupted)",
                self.file,
            )
        if 8 + length > size:
            raise BlobError(
                f"expected a {length}-byte header, found only {size - 8} bytes after the "
                "header size (truncated?)",
                self.file,
            )
        return length

    def _parse_header(self, text: bytes, data_start: int, size: int) -> dict[str, _Info]:
        # JSON makes a few objects per entry that are all freed right after; with the
        # garbage collector on, they trigger full collections of the (large) heap of a
        # training process, which cost more than the parse itself.
        with _gc.paused():
            return self._parse_table(text, data_start, size)

    def _parse_table(self, text: bytes, data_start: int, size: int) -> dict[str, _Info]:
        try:
            table = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise BlobError(
                f"expected a JSON header, found invalid JSON ({exc})", self.file
            ) from None
        if not isinstance(table, dict):
            raise BlobError(
                f"expected a JSON object header, found {type(table).__name__}", self.file
            )
        metadata = table.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise BlobError("expected __metadata__ to map strings to strings", self.file)
        self._metadata = metadata
        # The checks of _check_entry, inlined for the entries that pass them (a header
        # may hold 100,000 entries); the first that does not is described by it.
        entries: dict[str, _Info] = {}
        code_of, itemsize, info = NAME_OF_CODE, ITEMSIZE, _Info
        for key, spec in table.items():
            try:
                dtype = code_of[spec["dtype"]]
                shape = spec["shape"]
                begin, end = spec["data_offsets"]
                nbytes = itemsize[dtype]
                for n in shape:
                    if n.__class__ is not int or n < 0:
                        raise TypeError
                    nbytes *= n
                if (
                    begin.__class__ is not int
                    or end.__class__ is not int
                    or not 0 <= begin <= end
                    or end - begin != nbytes
                    or data_start + end > size
                ):
                    raise ValueError
                entries[key] = info(dtype, tuple(shape), data_start + begin, data_start + end)
            except (TypeError, KeyError, ValueError, AttributeError):
                entries[key] = self._check_entry(key, spec, data_start, size)
                raise AssertionError(f"entry {key!r} passed the full check only") from None
        self._check_tiling(entries, size - data_start, data_start)
        return entries

    def _check_entry(self, key: str, spec: Any, data_start: int, size: int) -> _Info:
        try:
            code, shape, (begin, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
            dtype = NAME_OF_CODE[code]
            nbytes = ITEMSIZE[dtype]
            for n in shape:
                if type(n) is not int or n < 0:
                    raise TypeError
                nbytes *= n
            if type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
                raise TypeError
        except (TypeError, KeyError, ValueError):
            raise self._bad_entry(key, spec) from None
        if end - begin != nbytes:
            raise BlobError(
                f"expected {nbytes} bytes for {code} {shape}, found data_offsets "
                f"[{begin}, {end}] ({end - begin} bytes)",
                self.file,
                key,
            )
        if data_start + end > size:
            raise BlobError(
                f"expected data within the file's {size} bytes, found it ending at "
                f"byte {data_start + end} (truncated?)",
                self.file,
                key,
            )
        return _Info(dtype, tuple(shape), data_start + begin, data_start + end)

    def _bad_entry(self, key: str, spec: object) -> BlobError:
        """Say precisely what is wrong with an entry the fast path refused."""
        if not isinstance(spec, dict):
            msg = f"expected an object with dtype, shape and data_offsets, found {spec!r}"
        elif not isinstance(spec.get("dtype"), str) or spec["dtype"] not in NAME_OF_CODE:
            msg = f"expected a dtype among {sorted(NAME_OF_CODE)}, found {spec.get('dtype')!r}"
        elif not isinstance(spec.get("shape"), list) or not all(
            _is_int(n) and n >= 0 for n in spec["shape"]
        ):
            msg = f"expected shape as a list of non-negative ints, found {spec.get('shape')!r}"
        else:
            msg = (
                "expected data_offsets [begin, end] with 0 <= begin <= end, found "
                f"{spec.get('data_offsets')!r}"
            )
        return BlobError(msg, self.file, key)

    def _check_tiling(self, entries: dict[str, _Info], data_size: int, data_start: int) -> None:
        """Entries must cover the data exactly, as safetensors requires: no overlap, no gap.

        A gap would also hide an entry dropped by a duplicate key in the JSON.
        """
        position = data_start
        for info in entries.values():  # as this module writes them: in file order
            if info.start != position:
                break
            position = info.end
        else:
            if position == data_start + data_size:
                return
        position = data_start
        previous = None
        for key, info in sorted(entries.items(), key=lambda item: (item[1].start, item[1].end)):
            if info.start < position:
                raise BlobError(
                    f"expected entries not to overlap, found {previous!r} and {key!r} "
                    "sharing bytes",
                    self.file,
                )
            if info.start > position:
                raise BlobError(
                    f"expected entries to cover the data without gaps, found "
                    f"{info.start - position} unused bytes before {key!r}",
                    self.file,
                )
            position, previous = info.end, key
        if position != data_start + data_size:
            raise BlobError(
                f"expected the data to end at byte {position}, found a file of "
                f"{data_start + data_size} bytes",
                self.file,
            )

    # -- entries ---------------------------------------------------------------------

    def _check_fit(self, ref: BlobRef, info: _Info) -> None:
        """The ref's view must lie within the entry (a ref is data from a file)."""
        if ref.stride is None:
            stored, extra = STORED_AS.get(ref.dtype, (ref.dtype, 0))
            shape = (*ref.shape, extra) if extra else ref.shape
            if stored != info.dtype or shape != info.shape:
                raise BlobError(
                    f"expected {CODES[stored]} {list(shape)} for a {ref.dtype} ref, "
                    f"found {CODES[info.dtype]} {list(info.shape)}",
                    self.file,
                    ref.key,
                )
        elif math.prod(ref.shape) > 0:
            nbytes = info.end - info.start
            if math.prod(ref.shape) * ITEMSIZE[ref.dtype] > nbytes:
                # The writer stores a view that repeats elements (stride 0, expand) as a
                # copy of its own: a view larger than its entry only makes memory blow up.
                raise BlobError(
                    f"expected a view of at most the entry's {nbytes} bytes, found shape "
                    f"{ref.shape} stride {ref.stride} ({math.prod(ref.shape)} elements of "
                    f"{ITEMSIZE[ref.dtype]} bytes)",
                    self.file,
                    ref.key,
                )
            last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
            reach = (last + 1) * ITEMSIZE[ref.dtype]
            if reach > nbytes:
                raise BlobError(
                    f"expected a view within the entry's {nbytes} bytes, found shape "
                    f"{ref.shape} stride {ref.stride} offset {ref.offset} reaching byte {reach}",
                    self.file,
                    ref.key,
                )

    def _buffer(self, key: str, info: _Info) -> tuple[Any, int]:
        """A buffer holding the entry's bytes, and where they start in it."""
        if self._local:
            return self._mmap, info.start
        data = self._fetched.get(key)
        if data is None:
            nbytes = info.end - info.start
            raw = self._fs.cat_file(self._path, start=info.start, end=info.end) if nbytes else b""
            if len(raw) != nbytes:
                raise BlobError(
                    f"expected {nbytes} bytes, read {len(raw)} (file changed or truncated?)",
                    self.file,
                    key,
                )
            # Writable, so the tensors built on it are too.
            data = self._fetched[key] = bytearray(raw)
        return data, 0

    def _verify(self, ref: BlobRef, info: _Info) -> None:
        if not self.verify:
            return
        if not ref.checksum:
            # A record that lost its checksum is not "unverified": the whole file's
            # checksum (from COMMITTED) covers its bytes. Without one, it is refused.
            self._verify_file(ref)
            return
        digest = self._digests.get(ref.key)
        if digest is None:
            if self._local:
                assert self._view is not None
                digest = checksum(self._view[info.start : info.end])
            else:
                digest = checksum(self._buffer(ref.key, info)[0])
            self._digests[ref.key] = digest
        if digest != ref.checksum:
            raise BlobError(
                f"expected checksum {ref.checksum}, found {digest}: the entry's bytes are "
                "corrupted or the file was replaced",
                self.file,
                ref.key,
            )

    def _verify_file(self, ref: BlobRef) -> None:
        if self._file_verified:
            return
        if self.file_checksum is None:
            raise BlobError(
                "expected a checksum in the record, found none, and no checksum of the whole "
                "file (a committed checkpoint's COMMITTED) to check the bytes against; pass "
                "verify=False to read them unchecked",
                self.file,
                ref.key,
            )
        if self._local:
            assert self._view is not None
            digest = checksum(self._view)
        else:
            h = _fs.hasher()
            with self._fs.open(self._path, "rb") as f:
                while chunk := f.read(_REMOTE_CHUNK):
                    h.update(chunk)
            digest = _fs.digest(h)
        if digest != self.file_checksum:
            raise BlobError(
                f"expected the file checksum {self.file_checksum} that COMMITTED records, "
                f"found {digest}: the file is corrupted or was replaced",
                self.file,
                ref.key,
            )
        self._file_verified = True

    def _array(self, ref: BlobRef, info: _Info) -> np.ndarray[Any, Any]:
        import numpy as np

        if ref.dtype not in NUMPY_NAMES:  # never let np.dtype() see another string
            raise BlobError(f"numpy has no dtype {ref.dtype!r}", self.file, ref.key)
        dtype = np.dtype(ref.dtype).newbyteorder("<")
        nbytes = info.end - info.start
        if nbytes == 0:
            return np.empty(ref.shape, dtype=dtype)
        buffer, start = self._buffer(ref.key, info)
        flat = np.frombuffer(buffer, dtype=np.uint8, count=nbytes, offset=start)
        if flat.ctypes.data % dtype.alignment:
            flat = flat.copy()  # a file from another writer with unaligned entries
        array: np.ndarray[Any, Any] = flat.view(dtype).reshape(ref.shape)
        return array

    def _tensor(self, ref: BlobRef, info: _Info, device: torch.device) -> torch.Tensor:
        import torch

        dtype = _torch_dtype(ref.dtype, self.file, ref.key)
        place = (ref.key, str(device))
        base: torch.Tensor | None = self._bases.get(place)
        if ref.stride is None and base is None:
            # The common case: the entry is exactly this tensor.
            tensor: torch.Tensor = self._load(ref.key, info, dtype, device)
            self._bases[place] = tensor
            return tensor.view(ref.shape) if tensor.shape != ref.shape else tensor
        if base is None:
            base = self._bases[place] = self._load(ref.key, info, torch.uint8, device)
        # Another ref into an entry already loaded: a view of the same storage, so the
        # two stay tied.
        stride = _contiguous(ref.shape) if ref.stride is None else ref.stride
        view = torch.empty(0, dtype=dtype, device=base.device)
        return view.set_(base.untyped_storage(), ref.offset, ref.shape, stride)

    def _load(self, key: str, info: _Info, dtype: torch.dtype, device: torch.device) -> Any:
        """A 1-d tensor of the entry's bytes as ``dtype``, on ``device``."""
        import torch

        nbytes = info.end - info.start
        if nbytes == 0:
            return torch.empty(0, dtype=dtype, device=device)
        buffer, start = self._buffer(key, info)
        itemsize = dtype.itemsize
        tensor = torch.frombuffer(buffer, dtype=dtype, count=nbytes // itemsize, offset=start)
        if tensor.data_ptr() % min(itemsize, 8):
            tensor = tensor.clone()  # a file from another writer with unaligned entries
        if device.type != "cpu":
            tensor = tensor.to(device)
        return tensor


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, step = [], 1
    for n in reversed(shape):
        stride.append(step)
        step *= max(n, 1)
    return tuple(reversed(stride))


def _torch_dtype(name: str, file: str, key: str) -> torch.dtype:
    dtype = torch_dtype(name)
    if dtype is None:
        import torch

        raise BlobError(f"this torch ({torch.__version__}) has no dtype {name}", file, key)
    return dtype
