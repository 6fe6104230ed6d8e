"""Blob files: the streaming safetensors writer, the lazy checked reader, and their refs.

Everything runs on real files (a temporary directory, ``memory://`` fsspec storage) and
is cross-checked with ``safetensors.safe_open``.
"""

from __future__ import annotations

import dataclasses
import doctest
import gc
import json
import os
import pickle
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem
from safetensors import safe_open

import hyperstate.tensors.safetensors
from hyperstate import HyperstateError
from hyperstate.tensors.safetensors import BlobError, BlobReader, BlobRef, BlobWriter, checksum

FILE = "blobs/rank-00000.safetensors"

# Every dtype the blob layer stores, whether safetensors names it or it is stored as the
# bytes of another dtype (complex128, complex32, float4).
DTYPES = [
    name
    for name in [
        "float64",
        "float32",
        "float16",
        "bfloat16",
        "int64",
        "int32",
        "int16",
        "int8",
        "uint64",
        "uint32",
        "uint16",
        "uint8",
        "bool",
        "complex64",
        "complex128",
        "complex32",
        "float8_e4m3fn",
        "float8_e5m2",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "float4_e2m1fn_x2",
    ]
    if hasattr(torch, name)
]
STORED_AS_OTHER = {"complex128", "complex32", "float4_e2m1fn_x2"}


def random_tensor(name: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Arbitrary bit patterns of a dtype: NaNs with payloads, infinities, subnormals."""
    dtype = getattr(torch, name)
    gen = torch.Generator().manual_seed(seed)
    numel = 1
    for n in shape:
        numel *= n
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (numel * itemsize,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype).reshape(shape)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a tensor, so NaN payloads compare exactly."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def write(directory: str | Path, items: dict[str, Any], file: str = FILE) -> list[BlobRef]:
    writer = BlobWriter(directory, file)
    for key, value in items.items():
        writer.add(key, value)
    return writer.write()


def header_of(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    table: dict[str, Any] = json.loads(data[8 : 8 + n])
    return table


def craft(path: Path, table: dict[str, Any], data: bytes = b"", length: int | None = None) -> None:
    """A blob file with a hand-made header."""
    text = json.dumps(table).encode()
    text += b" " * (-len(text) % 8)
    size = len(text) if length is None else length
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(size.to_bytes(8, "little") + text + data)


# ---------------------------------------------------------------------------------------
# Round trips


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("name", DTYPES)
def test_every_dtype_round_trips_bit_exact(tmp_path: Path, name: str) -> None:
    values = {
        "matrix": random_tensor(name, (7, 5), seed=1),
        "scalar": random_tensor(name, (), seed=2),
        "empty": random_tensor(name, (0, 4), seed=3),
    }
    refs = write(tmp_path, values)
    reader = BlobReader(tmp_path, FILE)
    for ref, (key, value) in zip(refs, values.items(), strict=True):
        assert ref.key == key and ref.dtype == name and ref.shape == tuple(value.shape)
        assert ref.checksum.startswith("xxh3-64:")
        loaded = reader.read(ref)
        assert isinstance(loaded, torch.Tensor)
        assert loaded.dtype == value.dtype and loaded.shape == value.shape
        assert torch.equal(bits(loaded), bits(value)), key


def test_nan_payloads_survive(tmp_path: Path) -> None:
    payloads = torch.tensor([0x7FC00001, 0xFFC12345 - 2**32, 0x7F800001, 0x00000001])
    value = payloads.to(torch.int32).view(torch.float32)
    (ref,) = write(tmp_path, {"x": value})
    loaded = BlobReader(tmp_path, FILE).read(ref)
    assert isinstance(loaded, torch.Tensor)
    assert torch.equal(loaded.view(torch.int32), payloads.to(torch.int32))


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_safe_open_reads_our_files(tmp_path: Path) -> None:
    values = {name: random_tensor(name, (3, 4), seed=i) for i, name in enumerate(DTYPES)}
    values["scalar"] = torch.tensor(2.5)
    values["empty"] = torch.empty(0, 2)
    write(tmp_path, values)
    with safe_open(str(tmp_path / FILE), "pt") as f:
        assert set(f.keys()) == set(values)
        for key, value in values.items():
            got = f.get_tensor(key)
            if key in STORED_AS_OTHER:
                # Stored as the bytes of a dtype safetensors names.
                assert torch.equal(bits(got), bits(value))
            else:
                assert got.dtype == value.dtype and torch.equal(bits(got), bits(value)), key
        assert f.metadata() == {"format": "pt"}


def test_entries_start_aligned(tmp_path: Path) -> None:
    values = {
        "u8": torch.ones(3, dtype=torch.uint8),
        "f64": torch.ones(3, dtype=torch.float64),
        "f16": torch.ones(3, dtype=torch.float16),
        "f32": torch.ones(3),
    }
    write(tmp_path, values)
    table = header_of(tmp_path / FILE)
    start = 8 + int.from_bytes((tmp_path / FILE).read_bytes()[:8], "little")
    assert start % 8 == 0
    for key, value in values.items():
        assert (start + table[key]["data_offsets"][0]) % value.element_size() == 0


def test_numpy_arrays_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values: dict[str, np.ndarray[Any, Any]] = {
        name: rng.integers(0, 100, (4, 3)).astype(name)
        for name in ["float16", "float32", "float64", "int8", "int64", "uint16", "uint64"]
    }
    values["bool"] = rng.integers(0, 2, 5).astype(bool)
    values["complex64"] = (rng.normal(size=3) + 1j * rng.normal(size=3)).astype(np.complex64)
    values["complex128"] = rng.normal(size=(2, 2)) + 1j
    values["strided"] = np.arange(20.0)[::3]
    values["transposed"] = np.arange(12, dtype=np.int32).reshape(3, 4).T
    values["big_endian"] = np.arange(6, dtype=">f4")
    values["scalar"] = np.array(7, dtype=np.int16)
    values["empty"] = np.zeros((0, 3), dtype=np.float32)
    values["large"] = rng.normal(size=(512, 600))[:, ::2]  # a copy, checksummed in a thread
    refs = write(tmp_path, values)
    reader = BlobReader(tmp_path, FILE)
    for ref, (key, value) in zip(refs, values.items(), strict=True):
        assert ref.kind == "numpy"
        loaded = reader.read(ref)
        assert isinstance(loaded, np.ndarray), key
        assert loaded.shape == value.shape and loaded.dtype == value.dtype.newbyteorder("="), key
        assert np.array_equal(loaded, value), key
        assert loaded.flags.writeable


def test_non_contiguous_tensors(tmp_path: Path) -> None:
    base = torch.arange(24.0).reshape(4, 6)
    values = {
        "transposed": torch.arange(12.0).reshape(3, 4).t(),
        "step": torch.arange(30, dtype=torch.int64)[::3],
        "sliced": base[1:3, ::2],
        "expanded": torch.tensor([1.0, 2.0]).expand(1000, 2),
        "conj": torch.complex(torch.arange(3.0), torch.ones(3)).conj(),
        "big_t": torch.randn(600, 700).t(),
    }
    refs = write(tmp_path, values)
    reader = BlobReader(tmp_path, FILE)
    for ref, (key, value) in zip(refs, values.items(), strict=True):
        loaded = reader.read(ref)
        assert isinstance(loaded, torch.Tensor)
        assert torch.equal(loaded, value.resolve_conj()), key
    # The expanded tensor is stored as a copy of its 2000 elements: a view larger than
    # its entry is refused on reading (a crafted one could claim 10**12 elements).
    assert header_of(tmp_path / FILE)["expanded"]["shape"] == [1000, 2]


def test_parameters_and_grad_tensors(tmp_path: Path) -> None:
    lin = torch.nn.Linear(3, 2)
    (ref,) = write(tmp_path, {"w": lin.weight})
    loaded = BlobReader(tmp_path, FILE).read(ref)
    assert isinstance(loaded, torch.Tensor) and not loaded.requires_grad
    assert torch.equal(loaded, lin.weight.detach())


# ---------------------------------------------------------------------------------------
# Shared storage


def test_same_tensor_twice_is_stored_once(tmp_path: Path) -> None:
    a = torch.nn.Linear(4, 4)
    b = torch.nn.Linear(4, 4)
    b.weight = a.weight  # tied
    writer = BlobWriter(tmp_path, FILE)
    first = writer.add("a.weight", a.weight)
    second = writer.add("b.weight", b.weight)
    assert first == second
    refs = writer.write()
    assert refs[0] == refs[1] and refs[0].key == "a.weight"
    table = header_of(tmp_path / FILE)
    assert set(table) == {"__metadata__", "a.weight"}
    reader = BlobReader(tmp_path, FILE)
    x, y = reader.read(refs[0]), reader.read(refs[1])
    assert x is y


def test_views_of_one_storage_stay_tied(tmp_path: Path) -> None:
    w = torch.arange(12.0).reshape(3, 4)
    values = {"w": w, "w_t": w.t(), "row": w[1], "cols": w[:, 1::2], "as_int": w.view(torch.int32)}
    writer = BlobWriter(tmp_path, FILE)
    added = [writer.add(k, v) for k, v in values.items()]
    refs = writer.write()
    assert [dataclasses.replace(r, checksum="") for r in refs] == added
    assert len({r.checksum for r in refs}) == 1
    assert set(header_of(tmp_path / FILE)) == {"__metadata__", "w"}
    reader = BlobReader(tmp_path, FILE)
    loaded = [reader.read(r) for r in refs]
    for got, value in zip(loaded, values.values(), strict=True):
        assert isinstance(got, torch.Tensor)
        assert torch.equal(got, value)
    w2, w_t2, row2, cols2, as_int2 = loaded
    assert isinstance(w2, torch.Tensor) and isinstance(row2, torch.Tensor)
    w2[1, 1] = 100.0
    assert w_t2[1, 1] == 100.0 and row2[1] == 100.0 and cols2[1, 0] == 100.0
    assert as_int2[1, 1] == torch.tensor(100.0).view(torch.int32)
    row2.zero_()
    assert w2[1].sum() == 0


def test_a_view_added_first_stores_its_whole_storage(tmp_path: Path) -> None:
    w = torch.arange(10.0)
    refs = write(tmp_path, {"tail": w[5:], "head": w[:3]})
    assert refs[0].stride == (1,) and refs[0].offset == 5
    assert refs[1].key == "tail" and refs[1].offset == 0
    reader = BlobReader(tmp_path, FILE)
    tail, head = reader.read(refs[0]), reader.read(refs[1])
    assert isinstance(tail, torch.Tensor) and isinstance(head, torch.Tensor)
    assert tail.tolist() == [5.0, 6.0, 7.0, 8.0, 9.0] and head.tolist() == [0.0, 1.0, 2.0]
    assert tail.untyped_storage().data_ptr() == head.untyped_storage().data_ptr()


def test_storages_sharing_an_address_with_different_sizes(tmp_path: Path) -> None:
    array = np.arange(10.0)
    small, large = torch.from_numpy(array[:4]), torch.from_numpy(array)
    refs = write(tmp_path, {"small": small, "large": large})
    reader = BlobReader(tmp_path, FILE)
    assert torch.equal(reader.read(refs[0]), small)  # type: ignore[arg-type]
    assert torch.equal(reader.read(refs[1]), large)  # type: ignore[arg-type]


def test_keys_are_unique(tmp_path: Path) -> None:
    writer = BlobWriter(tmp_path, FILE)
    keys = [
        writer.add(hint, torch.zeros(1)).key
        for hint in ["x", "x", "x~1", "__metadata__", "", "bad\nkey"]
    ]
    assert keys == ["x", "x~1", "x~1~1", "__metadata__~1", "tensor", "bad_key"]
    refs = writer.write()
    with safe_open(str(tmp_path / FILE), "pt") as f:
        assert sorted(f.keys()) == sorted(keys)
    reader = BlobReader(tmp_path, FILE)
    assert [reader.read(r).shape for r in refs] == [(1,)] * 6


# ---------------------------------------------------------------------------------------
# Writer errors


def test_writer_refuses_what_it_cannot_store(tmp_path: Path) -> None:
    writer = BlobWriter(tmp_path, FILE)
    with pytest.raises(TypeError, match=r"expected a torch\.Tensor or numpy\.ndarray"):
        writer.add("x", [1.0, 2.0])
    with pytest.raises(BlobError, match="plain dense tensor"):
        writer.add("sparse", torch.eye(3).to_sparse())
    with pytest.raises(BlobError, match="meta tensor"):
        writer.add("meta", torch.empty(3, device="meta"))
    with pytest.raises(BlobError, match="numpy dtype"):
        writer.add("obj", np.array([object()]))
    writer.add("ok", torch.ones(2))
    writer.write()
    with pytest.raises(BlobError, match="called twice"):
        writer.write()
    with pytest.raises(BlobError, match="after write"):
        writer.add("late", torch.ones(2))


@pytest.mark.parametrize("file", ["../x.safetensors", "/tmp/x.safetensors", "a/../../x", "a//b"])
def test_writer_refuses_paths_outside(tmp_path: Path, file: str) -> None:
    with pytest.raises(BlobError):
        BlobWriter(tmp_path, file)


# ---------------------------------------------------------------------------------------
# Reader: checks


def test_corrupted_byte_names_file_and_entry(tmp_path: Path) -> None:
    refs = write(tmp_path, {"a": torch.arange(100.0), "b": torch.ones(100)})
    path = tmp_path / FILE
    table = header_of(path)
    start = 8 + int.from_bytes(path.read_bytes()[:8], "little") + table["b"]["data_offsets"][0]
    data = bytearray(path.read_bytes())
    data[start + 17] ^= 0x01
    path.write_bytes(bytes(data))
    reader = BlobReader(tmp_path, FILE)
    reader.read(refs[0])  # the other entry is intact
    with pytest.raises(BlobError) as info:
        reader.read(refs[1])
    assert info.value.file == FILE and info.value.key == "b"
    assert FILE in str(info.value) and "'b'" in str(info.value) and "checksum" in str(info.value)
    assert isinstance(info.value, HyperstateError)
    # verify=False trusts the bytes.
    unchecked = BlobReader(tmp_path, FILE, verify=False).read(refs[1])
    assert isinstance(unchecked, torch.Tensor) and not torch.equal(unchecked, torch.ones(100))


def test_a_ref_with_another_checksum_fails_even_after_a_good_one(tmp_path: Path) -> None:
    (ref,) = write(tmp_path, {"a": torch.ones(4)})
    reader = BlobReader(tmp_path, FILE)
    reader.read(ref)
    with pytest.raises(BlobError, match="expected checksum"):
        reader.read(dataclasses.replace(ref, checksum="xxh3-64:" + "0" * 16))


def test_truncated_file(tmp_path: Path) -> None:
    refs = write(tmp_path, {"a": torch.arange(1000.0)})
    path = tmp_path / FILE
    data = path.read_bytes()
    for cut in [len(data) - 1, 100, 10, 4, 0]:
        path.write_bytes(data[:cut])
        with pytest.raises(BlobError, match=r"truncated") as info:
            BlobReader(tmp_path, FILE).read(refs[0])
        assert info.value.file == FILE


def test_absurd_header_size(tmp_path: Path) -> None:
    craft(tmp_path / FILE, {}, length=2**60)
    with pytest.raises(BlobError, match=f"{FILE}: expected a header of at most"):
        BlobReader(tmp_path, FILE).keys()


def test_header_pointing_past_the_end(tmp_path: Path) -> None:
    entry = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    craft(tmp_path / FILE, {"x": entry}, data=bytes(8))
    with pytest.raises(BlobError, match="ending at byte") as info:
        BlobReader(tmp_path, FILE).keys()
    assert info.value.key == "x"


def test_overlapping_entries(tmp_path: Path) -> None:
    table = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    craft(tmp_path / FILE, table, data=bytes(12))
    with pytest.raises(BlobError, match="'a' and 'b'"):
        BlobReader(tmp_path, FILE).keys()


def test_entries_must_tile_the_data(tmp_path: Path) -> None:
    entry = {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}
    craft(tmp_path / FILE, {"x": entry}, data=bytes(3))
    with pytest.raises(BlobError, match="expected the data to end at byte"):
        BlobReader(tmp_path, FILE).keys()
    gap = {"dtype": "U8", "shape": [2], "data_offsets": [3, 5]}
    craft(tmp_path / FILE, {"x": entry, "y": gap}, data=bytes(5))
    with pytest.raises(BlobError, match="1 unused bytes before 'y'"):
        BlobReader(tmp_path, FILE).keys()


def test_a_duplicate_key_cannot_hide_an_entry(tmp_path: Path) -> None:
    # JSON keeps the last of two equal keys; the bytes of the first then cover nothing.
    text = (
        b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
        b'"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}'
    )
    text += b" " * (-len(text) % 8)
    (tmp_path / "blobs").mkdir()
    (tmp_path / FILE).write_bytes(len(text).to_bytes(8, "little") + text + bytes(4))
    with pytest.raises(BlobError, match="unused bytes before 'a'"):
        BlobReader(tmp_path, FILE).keys()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"x": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, "expected a dtype"),
        ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}, "expected 12 bytes"),
        ({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, "non-negative ints"),
        ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, "begin <= end"),
        ({"x": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, "non-negative ints"),
        ({"x": [1, 2]}, "expected an object"),
        ({"__metadata__": {"a": 1}}, "__metadata__"),
    ],
)
def test_malformed_headers(tmp_path: Path, table: dict[str, Any], message: str) -> None:
    craft(tmp_path / FILE, table, data=bytes(16))
    with pytest.raises(BlobError, match=message):
        BlobReader(tmp_path, FILE).keys()


@pytest.mark.parametrize("text", [b"[1, 2]    ", b"{not json}", b"\xff\xfe    ", b"[" * 100_000])
def test_headers_that_are_not_json_objects(tmp_path: Path, text: bytes) -> None:
    (tmp_path / "blobs").mkdir()
    (tmp_path / FILE).write_bytes(len(text).to_bytes(8, "little") + text)
    with pytest.raises(BlobError, match="JSON"):
        BlobReader(tmp_path, FILE).keys()


@pytest.mark.parametrize(
    "file", ["../x.safetensors", "/etc/passwd", "blobs/../../x", "blobs\\..\\x", "s3://b/x", ""]
)
def test_refs_cannot_leave_the_directory(tmp_path: Path, file: str) -> None:
    with pytest.raises(BlobError, match="expected a"):
        BlobReader(tmp_path / "ckpt", file)


def test_symlinks_cannot_leave_the_directory(tmp_path: Path) -> None:
    write(tmp_path / "elsewhere", {"a": torch.ones(2)})
    (tmp_path / "ckpt" / "blobs").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere" / FILE, tmp_path / "ckpt" / FILE)
    with pytest.raises(BlobError, match="resolves to"):
        BlobReader(tmp_path / "ckpt", FILE)


def test_unknown_key_and_other_file(tmp_path: Path) -> None:
    (ref,) = write(tmp_path, {"net.weight": torch.ones(2)})
    reader = BlobReader(tmp_path, FILE)
    with pytest.raises(BlobError, match=r"did you mean 'net\.weight'") as info:
        reader.read(dataclasses.replace(ref, key="net.wieght"))
    assert info.value.key == "net.wieght" and info.value.file == FILE
    with pytest.raises(BlobError, match="expected a ref into"):
        reader.read(dataclasses.replace(ref, file="blobs/rank-00001.safetensors"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BlobError, match="does not exist"):
        BlobReader(tmp_path, FILE).keys()


def test_refs_that_do_not_fit_their_entry(tmp_path: Path) -> None:
    (ref,) = write(tmp_path, {"a": torch.ones(2, 3)})
    reader = BlobReader(tmp_path, FILE)
    with pytest.raises(BlobError, match=r"expected F64 \[2, 3\]"):
        reader.read(dataclasses.replace(ref, dtype="float64"))
    with pytest.raises(BlobError, match=r"expected F32 \[3, 3\]"):
        reader.read(dataclasses.replace(ref, shape=(3, 3)))
    # A strided view may not reach past its entry.
    with pytest.raises(BlobError, match="at most the entry's 24 bytes"):
        reader.read(dataclasses.replace(ref, shape=(7,), stride=(1,)))
    with pytest.raises(BlobError, match="within the entry"):
        reader.read(dataclasses.replace(ref, shape=(2,), stride=(1,), offset=5))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dtype": "object"}, "expected a dtype"),
        ({"kind": "pickle"}, "expected kind"),
        ({"shape": (2, -1)}, "non-negative ints"),
        ({"shape": ("2",)}, "non-negative ints"),
        ({"stride": (1,)}, "expected 2 strides"),
        ({"offset": 3}, "without a stride"),
        ({"checksum": "md5:abc"}, "expected checksum"),
        ({"device": "cuda:0; rm -rf"}, "expected a device"),
        ({"kind": "numpy", "dtype": "bfloat16"}, "numpy has no dtype"),
    ],
)
def test_malformed_refs(change: dict[str, Any], message: str) -> None:
    good = BlobRef(FILE, "a", "float32", (2, 3))
    with pytest.raises(BlobError, match=message):
        dataclasses.replace(good, **change)


def test_refs_accept_lists_and_are_small_records() -> None:
    ref = BlobRef(FILE, "a", "float32", [2, 3], stride=[3, 1])  # type: ignore[arg-type]
    assert ref.shape == (2, 3) and ref.stride == (3, 1)
    assert hash(ref) == hash(BlobRef(FILE, "a", "float32", (2, 3), stride=(3, 1)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.key = "b"  # type: ignore[misc]
    for field in dataclasses.fields(ref):
        value = getattr(ref, field.name)
        assert value is None or isinstance(value, str | int | tuple)


def test_blob_error_pickles() -> None:
    error = BlobError("expected x, found y", FILE, "k")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) == f"{FILE} entry 'k': expected x, found y"


def test_checksum_helper() -> None:
    assert checksum(b"") == "xxh3-64:2d06800538d394c2"
    assert checksum(memoryview(b"abc")) == checksum(b"abc") != checksum(b"abd")


# ---------------------------------------------------------------------------------------
# Reader: zero copy, laziness, devices


def _mapping_of(path: Path) -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith(str(path.resolve())):
                lo, hi = line.split()[0].split("-")
                ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc (Linux)")
def test_local_reads_are_zero_copy_views_of_the_mapping(tmp_path: Path) -> None:
    value = torch.randn(256, 256)
    refs = write(tmp_path, {"big": value, "arr": np.arange(1000.0)})
    reader = BlobReader(tmp_path, FILE)
    big, arr = reader.read(refs[0]), reader.read(refs[1])
    assert isinstance(big, torch.Tensor) and isinstance(arr, np.ndarray)
    ranges = _mapping_of(tmp_path / FILE)
    assert ranges, "the blob file is not memory-mapped"

    def mapped(address: int, nbytes: int) -> bool:
        return any(lo <= address and address + nbytes <= hi for lo, hi in ranges)

    assert mapped(big.data_ptr(), big.nbytes)
    assert mapped(arr.ctypes.data, arr.nbytes)
    # Tensors outlive the reader: they keep the mapping alive.
    del reader
    gc.collect()
    assert torch.equal(big, value)
    # The mapping is copy-on-write: writing to a tensor never changes the file.
    big.zero_()
    fresh = BlobReader(tmp_path, FILE).read(refs[0])
    assert torch.equal(fresh, value)  # type: ignore[arg-type]


def test_close_keeps_read_tensors_valid(tmp_path: Path) -> None:
    (ref,) = write(tmp_path, {"a": torch.arange(5.0)})
    with BlobReader(tmp_path, FILE) as reader:
        a = reader.read(ref)
    gc.collect()
    assert isinstance(a, torch.Tensor) and a.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert BlobReader(tmp_path, FILE).keys() == ["a"]


def test_map_location_and_recorded_device(tmp_path: Path) -> None:
    (ref,) = write(tmp_path, {"a": torch.arange(4.0)})
    reader = BlobReader(tmp_path, FILE)
    meta = reader.read(ref, map_location="meta")
    assert isinstance(meta, torch.Tensor) and meta.device.type == "meta"
    on_cpu = reader.read(ref, map_location=torch.device("cpu"))
    assert isinstance(on_cpu, torch.Tensor) and on_cpu.device.type == "cpu"
    if not torch.cuda.is_available():
        # Saved on a GPU this machine lacks: restored to the CPU.
        from_gpu = reader.read(dataclasses.replace(ref, device="cuda:3"))
        assert isinstance(from_gpu, torch.Tensor) and from_gpu.device.type == "cpu"
        assert torch.equal(from_gpu, torch.arange(4.0))


# ---------------------------------------------------------------------------------------
# Remote storage (fsspec)


class CountingFS(MemoryFileSystem):  # type: ignore[misc]
    """In-memory storage that records how it is read."""

    protocol = "countingmem"
    ranges: list[tuple[str, int | None, int | None, int]] = []  # noqa: RUF012
    opened_for_reading: list[str] = []  # noqa: RUF012

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        return super()._strip_protocol(str(path).removeprefix("countingmem://"))

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kw: Any
    ) -> Any:
        data = super().cat_file(path, start, end, **kw)
        self.ranges.append((path, start, end, len(data)))
        return data

    def _open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
        if "r" in mode:
            self.opened_for_reading.append(path)
        return super()._open(path, mode, **kw)


fsspec.register_implementation("countingmem", CountingFS, clobber=True)


@pytest.fixture
def remote() -> Iterator[str]:
    url = f"countingmem://ckpt-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("countingmem")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def test_remote_reads_only_the_entry_range(remote: str) -> None:
    values = {
        "big": torch.randn(300_000),  # > 1 MiB
        "small": torch.arange(3, dtype=torch.int16),
        "arr": np.arange(10.0),
    }
    refs = write(remote, values)
    fs = fsspec.filesystem("countingmem")
    size = fs.size(f"{remote}/{FILE}")
    header_len = int.from_bytes(fs.cat_file(f"{remote}/{FILE}", 0, 8), "little")
    table = header_of_remote(fs, f"{remote}/{FILE}")
    CountingFS.ranges.clear()
    reader = BlobReader(remote, FILE)
    small = reader.read(refs[1])
    assert isinstance(small, torch.Tensor) and small.tolist() == [0, 1, 2]
    begin, end = table["small"]["data_offsets"]
    read = [(start, stop, n) for _, start, stop, n in CountingFS.ranges]
    assert read == [
        (0, 8, 8),
        (8, 8 + header_len, header_len),
        (8 + header_len + begin, 8 + header_len + end, 6),
    ]
    assert sum(n for *_, n in read) < size / 100
    assert CountingFS.opened_for_reading == []
    # Other entries, and tied/duplicate reads, come from their own ranges only.
    big = reader.read(refs[0])
    assert isinstance(big, torch.Tensor) and torch.equal(big, values["big"])
    arr = reader.read(refs[2])
    assert isinstance(arr, np.ndarray) and np.array_equal(arr, values["arr"])
    assert reader.read(refs[1]) is small
    assert len(CountingFS.ranges) == 5
    # Remote tensors are writable copies.
    small.add_(1)


def header_of_remote(fs: Any, path: str) -> dict[str, Any]:
    n = int.from_bytes(fs.cat_file(path, 0, 8), "little")
    table: dict[str, Any] = json.loads(fs.cat_file(path, 8, 8 + n))
    return table


def test_remote_round_trip_with_tied_views_and_corruption(
    remote: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small upload pieces, so the chunked remote write path runs on small tensors.
    monkeypatch.setattr(hyperstate.tensors.safetensors, "_REMOTE_CHUNK", 1000)
    w = torch.randn(40, 30)
    values = {"w": w, "w_t": w.t(), "bf16": random_tensor("bfloat16", (5, 7)), "e": torch.empty(0)}
    refs = write(remote, values)
    reader = BlobReader(remote, FILE)
    loaded = [reader.read(r) for r in refs]
    for got, value in zip(loaded, values.values(), strict=True):
        assert isinstance(got, torch.Tensor) and torch.equal(bits(got), bits(value))
    w2, w_t2 = loaded[0], loaded[1]
    assert isinstance(w2, torch.Tensor) and isinstance(w_t2, torch.Tensor)
    w2[3, 4] = 1e6
    assert w_t2[4, 3] == 1e6
    # A flipped byte on remote storage is caught too.
    fs = fsspec.filesystem("countingmem")
    path = f"{remote}/{FILE}"
    data = bytearray(fs.cat_file(path))
    data[-3] ^= 0x40
    fs.pipe_file(path, bytes(data))
    fresh = BlobReader(remote, FILE)
    last = max(refs, key=lambda r: header_of_remote(fs, path)[r.key]["data_offsets"][1])
    with pytest.raises(BlobError, match="expected checksum") as info:
        fresh.read(last)
    assert info.value.key == last.key


def test_memory_url_round_trip() -> None:
    url = f"memory://blobs-test-{uuid.uuid4().hex}"
    refs = write(url, {"a": torch.arange(6).reshape(2, 3), "n": np.ones(2, dtype=np.float16)})
    reader = BlobReader(url, FILE)
    assert torch.equal(reader.read(refs[0]), torch.arange(6).reshape(2, 3))  # type: ignore[arg-type]
    assert np.array_equal(reader.read(refs[1]), np.ones(2))  # type: ignore[arg-type]
    with pytest.raises(BlobError, match="expected a"):
        BlobReader(url, "../escape.safetensors")
    fsspec.filesystem("memory").rm(url, recursive=True)


# ---------------------------------------------------------------------------------------
# The module itself


def test_module_docstring_examples() -> None:
    result = doctest.testmod(hyperstate.tensors.safetensors, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_numpy_only_use_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from hyperstate.tensors.safetensors import BlobReader, BlobWriter\n"
        f"w = BlobWriter({str(tmp_path)!r}, 'b.safetensors')\n"
        "w.add('x', np.arange(3.0))\n"
        "(ref,) = w.write()\n"
        f"x = BlobReader({str(tmp_path)!r}, 'b.safetensors').read(ref)\n"
        "assert x.tolist() == [0.0, 1.0, 2.0]\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------
# Every header is parsed and checked whole, once per reader, at its first read


@pytest.fixture
def full_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The blob files whose header a reader parsed whole, once per parse."""
    parses: list[str] = []
    parse = BlobReader._parse_header

    def counting(self: BlobReader, text: bytes, data_start: int, size: int) -> Any:
        parses.append(self.file)
        return parse(self, text, data_start, size)

    monkeypatch.setattr(BlobReader, "_parse_header", counting)
    return parses


def writer_layout(entries: dict[str, tuple[int, int]]) -> bytes:
    """A header of uint8 entries, spelled as BlobWriter spells one (checked below)."""
    text = '{"__metadata__":{"format":"pt"}'
    for key, (begin, end) in entries.items():
        text += f',{json.dumps(key)}:{{"dtype":"U8","shape":[{end - begin}],'
        text += f'"data_offsets":[{begin},{end}]}}'
    return (text + "}").encode()


def raw_file(path: Path, text: bytes, data: bytes) -> None:
    """A blob file with exactly this header text (padded to 8 bytes) and data."""
    text += b" " * (-len(text) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def u8_ref(key: str, data: bytes) -> BlobRef:
    return BlobRef(FILE, key, "uint8", (len(data),), checksum=checksum(data))


def test_crafted_headers_are_laid_out_as_the_writer_lays_them_out(tmp_path: Path) -> None:
    u8 = torch.uint8
    write(tmp_path, {"k0": torch.zeros(2, dtype=u8), "k1": torch.ones(3, dtype=u8)})
    data = (tmp_path / FILE).read_bytes()
    text = data[8 : 8 + int.from_bytes(data[:8], "little")].rstrip(b" ")
    assert text == writer_layout({"k0": (0, 2), "k1": (2, 5)})


@pytest.mark.parametrize("where", ["local", "remote"])
def test_every_tensor_reads_back_and_the_header_is_parsed_once(
    tmp_path: Path, full_parses: list[str], where: str, request: pytest.FixtureRequest
) -> None:
    directory = tmp_path if where == "local" else request.getfixturevalue("remote")
    names = ["float32", "int64", "bfloat16", "uint8", "bool", "float16", "complex64", "int8"]
    values: dict[str, Any] = {
        f"t{i:02d}": random_tensor(names[i % len(names)], (i % 4 + 1, 3), seed=i) for i in range(20)
    }
    w = torch.randn(4, 5)
    values |= {"w": w, "w_t": w.t(), "empty": torch.empty(0, 7), "scalar": torch.tensor(2.5)}
    values["n"] = np.arange(6, dtype=np.int16).reshape(2, 3)
    refs = write(directory, values)
    assert len(refs) == 25
    reader = BlobReader(directory, FILE)
    loaded = []
    for i, ref in enumerate(refs):
        loaded.append(reader.read(ref))
        assert full_parses == [FILE], i  # at the first read, and only then
    for got, (key, value) in zip(loaded, values.items(), strict=True):
        if isinstance(value, np.ndarray):
            assert isinstance(got, np.ndarray) and np.array_equal(got, value), key
        else:
            assert isinstance(got, torch.Tensor), key
            assert got.dtype == value.dtype and got.shape == value.shape, key
            assert torch.equal(bits(got), bits(value)), key
    w2, w_t2 = loaded[20], loaded[21]
    assert isinstance(w2, torch.Tensor) and isinstance(w_t2, torch.Tensor)
    w2[1, 2] = 1e6  # tied views are still tied
    assert w_t2[2, 1] == 1e6
    assert reader.read(refs[3]) is loaded[3]
    # In another order, with another reader: one more parse.
    again = BlobReader(directory, FILE)
    for ref, value in reversed(list(zip(refs, values.values(), strict=True))):
        got = again.read(ref)
        if isinstance(value, torch.Tensor):
            assert isinstance(got, torch.Tensor) and torch.equal(bits(got), bits(value))
    assert full_parses == [FILE, FILE]


def test_a_header_with_escapes_is_parsed_whole(tmp_path: Path, full_parses: list[str]) -> None:
    # "\u00e9" and "é" are one key: with a backslash in the header, no count of the text
    # can tell that a key occurs once: the header is parsed whole, as every header is.
    refs = write(tmp_path, {"café": torch.ones(2), "b": torch.arange(3)})
    reader = BlobReader(tmp_path, FILE)
    assert torch.equal(reader.read(refs[1]), torch.arange(3))  # type: ignore[arg-type]
    assert full_parses == [FILE]
    assert torch.equal(reader.read(refs[0]), torch.ones(2))  # type: ignore[arg-type]
    assert full_parses == [FILE]


@pytest.mark.parametrize("layout", ["as saved", "reformatted"])
def test_files_from_safetensors_save_file_read_through_the_full_parse(
    tmp_path: Path, full_parses: list[str], layout: str
) -> None:
    from safetensors.torch import save_file

    values = {
        "z.weight": torch.randn(3, 4),
        "a.count": torch.arange(5),
        "m.half": random_tensor("bfloat16", (2, 3)),
        "m.mask": torch.tensor([True, False, True]),
        "e": torch.empty(0, 2),
        "b": random_tensor("uint8", (7,), seed=3),
    }
    path = tmp_path / FILE
    path.parent.mkdir()
    save_file(values, str(path))
    table = header_of(path)
    assert "__metadata__" not in table  # so no ',' comes before the first key
    if layout == "reformatted":
        # Another writer's spelling: spaces, newlines, entries in another order.
        data = path.read_bytes()[8 + int.from_bytes(path.read_bytes()[:8], "little") :]
        raw_file(path, json.dumps(dict(reversed(table.items())), indent=2).encode(), data)
        table = header_of(path)
    refs = {
        key: BlobRef(
            FILE,
            key,
            str(value.dtype).removeprefix("torch."),
            tuple(value.shape),
            checksum=checksum(bits(value).numpy().tobytes()),
        )
        for key, value in values.items()
    }
    reader = BlobReader(tmp_path, FILE)
    for key in table:  # in file order: the first key is not laid out as BlobWriter's are
        got = reader.read(refs[key])
        assert full_parses == [FILE], key
        assert isinstance(got, torch.Tensor) and torch.equal(bits(got), bits(values[key])), key
    assert sorted(reader.keys()) == sorted(values)
    # Entries may be found in the text in any order; every one reads the same.
    other = BlobReader(tmp_path, FILE)
    for key in reversed(table):
        got = other.read(refs[key])
        assert isinstance(got, torch.Tensor) and torch.equal(bits(got), bits(values[key])), key


# One key, two entries: JSON keeps the last ([2, 4]), and the bytes of the first then
# belong to no entry. However the duplicate is spelled, a read is refused, never answered
# with either entry's bytes.
_FIRST = b'{"dtype":"U8","shape":[2],"data_offsets":[0,2]}'
_LAST = b'{"dtype":"U8","shape":[2],"data_offsets":[2,4]}'
_META = b'{"__metadata__":{"format":"pt"},'


@pytest.mark.parametrize(
    "text",
    [
        _META[:-1] + b',"a":' + _FIRST + b',"a":' + _LAST + b"}",
        b'{"a":' + _FIRST + b',"a":' + _LAST + b"}",
        _META + b'"a":' + _FIRST + b',"\\u0061":' + _LAST + b"}",
        _META + b'"\\u0061":' + _FIRST + b',"a":' + _LAST + b"}",
        _META + b'"a":' + _FIRST + b',"a" :' + _LAST + b"}",
        _META + b'"a":' + _FIRST + b',"a": ' + _LAST + b"}",
    ],
    ids=[
        "both as the writer spells them",
        "the first right after the brace",
        "the last escaped",
        "the first escaped",
        "a space before the colon",
        "a space after the colon",
    ],
)
def test_a_duplicated_key_is_refused_at_the_first_read(
    tmp_path: Path, full_parses: list[str], text: bytes
) -> None:
    assert json.loads(text)["a"]["data_offsets"] == [2, 4]
    raw_file(tmp_path / FILE, text, b"\x01\x01\x02\x02")
    for data in (b"\x01\x01", b"\x02\x02"):
        with pytest.raises(BlobError, match="2 unused bytes before 'a'") as info:
            BlobReader(tmp_path, FILE).read(u8_ref("a", data))
        assert info.value.file == FILE
    assert full_parses == [FILE, FILE]


@pytest.mark.parametrize(
    ("bad", "size", "message"),
    [
        ({"x": (40, 44), "y": (42, 46)}, 46, "expected entries not to overlap, found 'x' and 'y'"),
        ({"x": (40, 42), "y": (43, 45)}, 45, "found 1 unused bytes before 'y'"),
        ({"x": (40, 42), "y": (42, 1042)}, 42, "ending at byte"),
    ],
    ids=["overlap", "gap", "past the end"],
)
def test_a_header_bad_elsewhere_fails_at_the_first_read_of_any_entry(
    tmp_path: Path,
    full_parses: list[str],
    bad: dict[str, tuple[int, int]],
    size: int,
    message: str,
) -> None:
    good = {f"k{i:02d}": (2 * i, 2 * i + 2) for i in range(20)}
    data = b"".join(bytes([i, i]) for i in range(20)) + bytes(range(size - 40))
    raw_file(tmp_path / FILE, writer_layout(good | bad), data)
    refs = [u8_ref(key, bytes([i, i])) for i, key in enumerate(good)]
    # Listing the entries, or the metadata, checks the whole header.
    with pytest.raises(BlobError, match=message):
        BlobReader(tmp_path, FILE).keys()
    with pytest.raises(BlobError, match=message):
        BlobReader(tmp_path, FILE).metadata()
    # So does the first read, even of a sound entry, and every read after it.
    reader = BlobReader(tmp_path, FILE)
    for ref in (refs[0], refs[16], refs[19]):
        with pytest.raises(BlobError, match=message) as info:
            reader.read(ref)
        assert info.value.file == FILE
    assert full_parses == [FILE] * 5  # a header that failed is checked again, never trusted
