"""A hostile torch.distributed.checkpoint directory is refused with a ConvertError before
anything is allocated, imported or read outside it (trust campaign, finding 6).

Each hostile ``.metadata`` is either written by hand, opcode by opcode, or is a real one
that DCP wrote, unpickled here (it is our own), changed, and pickled again.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
import torch.distributed.checkpoint.state_dict_loader as dcp_loader
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_cli import hs, one_error_line
from test_convert import dcp_save

import hyperstate
from hyperstate.tools import convert
from hyperstate.tools.convert import ConvertError, read_dcp

DCP_METADATA = "torch.distributed.checkpoint.metadata"


def saved(directory: Path) -> Path:
    """A small real DCP checkpoint: tensors (two sharing storage), bytes values, lists."""
    w = torch.arange(6.0).reshape(2, 3)
    state = {
        "model": {"w": w, "row": w[1], "b": torch.zeros(2, dtype=torch.bfloat16)},
        "opt": {"lr": 0.1, "groups": [{"t": torch.ones(1)}, {"t": torch.tensor(2.0)}]},
        "epoch": 3,
        "empty": torch.zeros(0, 4),
    }
    dcp_save(state, directory)
    return directory


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved(tmp_path_factory.mktemp("dcp") / "ckpt")


@pytest.fixture
def ckpt(original: Path, tmp_path: Path) -> Path:
    """A fresh copy of the real checkpoint, to damage."""
    return Path(shutil.copytree(original, tmp_path / "ckpt"))


def metadata_of(directory: Path) -> Any:
    with open(directory / ".metadata", "rb") as f:
        return pickle.load(f)  # our own file, written by DCP in this test


def rewrite(directory: Path, change: Callable[[Any], None]) -> None:
    metadata = metadata_of(directory)
    change(metadata)
    (directory / ".metadata").write_bytes(pickle.dumps(metadata))


@pytest.fixture
def dcp_never_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the metadata gets as far as DCP's loader."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("DCP was given metadata that should have been refused")

    monkeypatch.setattr(dcp_loader, "_load_state_dict", refuse)


def test_a_real_checkpoint_still_reads_whole(original: Path) -> None:
    state = read_dcp(str(original))
    w = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(state["model"]["w"], w) and torch.equal(state["model"]["row"], w[1])
    assert state["model"]["b"].dtype == torch.bfloat16
    assert state["opt"]["lr"] == 0.1 and state["epoch"] == 3
    assert state["opt"]["groups"][1]["t"].item() == 2.0
    assert state["empty"].shape == (0, 4)


def test_values_are_unpickled_only_with_weights_only(
    original: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DCP's own planner loads bytes values with weights_only=False: never reached.
    real_load = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        assert kwargs.get("weights_only") is True, "a DCP value unpickled without weights_only"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    state = read_dcp(str(original))
    assert state["opt"]["lr"] == 0.1 and state["epoch"] == 3


# -- the pickle, before it is unpickled ---------------------------------------------------

# Hand-written pickles: protocol 2 header, then opcodes.
PROTO2 = b"\x80\x02"


def global_(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def write_metadata(directory: Path, data: bytes) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / ".metadata").write_bytes(data)
    return directory


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        # 9 bytes: EMPTY_DICT, LONG_BINPUT 2**n, STOP. The C unpickler would grow its
        # memo to twice that index: 1 GiB for 2**26, 64 GiB for 2**32 - 1.
        *(
            (b"\x80\x04}r" + index.to_bytes(4, "little") + b".", f"memo entry {index} when 0")
            for index in (2**26, 2**30, 2**32 - 1)
        ),
        (b"\x80\x04}q\x07.", "memo entry 7 when 0"),  # BINPUT
        (b"\x80\x04}\x94j\x00\x00\x00\x01.", "fetches memo entry 16777216 of 1"),
        # A bytes8 that says it is 1 TiB long, a frame longer than the pickle.
        (b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"x.", "not a pickle"),
        (b"\x80\x04\x95" + (2**40).to_bytes(8, "little") + b"}.", "runs past the end"),
        (pickle.dumps({"a": 1}, protocol=0), "protocol 2 to 5"),
        (b"\x80\x06}.", "protocol 2 to 5"),
        (b"\x80\x02X\x01\x00\x00\x00aQ.", "opcode BINPERSID"),
        (b"\x80\x02\x82\x01.", "opcode EXT1"),
        (b"\x80\x02}2.", "opcode DUP"),
        (b"\x80\x02}.junk", "4 bytes follow the end"),
        (b"\x80\x02}", "not a pickle"),
        (b"\x80\x02\xff.", "not a pickle"),
        (b"\x80\x02e.", "APPENDS at byte 2 has no MARK"),
        (b"\x80\x02}}(b.", "BUILD at byte 5 takes 2 values, found 0"),
    ],
    ids=[
        "memo 2**26",
        "memo 2**30",
        "memo 2**32-1",
        "binput",
        "get past the memo",
        "bytes8 length",
        "frame length",
        "protocol 0",
        "protocol 6",
        "persistent id",
        "extension registry",
        "dup",
        "trailing bytes",
        "truncated",
        "unknown opcode",
        "no mark",
        "below a mark",
    ],
)
def test_a_bad_pickle_is_refused_before_it_is_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, reason: str
) -> None:
    def never(self: Any) -> Any:
        raise AssertionError("unpickled")

    monkeypatch.setattr(convert._MetadataUnpickler, "load", never)
    directory = write_metadata(tmp_path / "dcp", data)
    with pytest.raises(ConvertError, match="refused: ") as info:
        read_dcp(str(directory))
    assert reason in str(info.value)
    assert isinstance(info.value, hyperstate.HyperstateError)


def test_memo_bombs_take_no_memory(tmp_path: Path) -> None:
    """With the address space capped at 1 GiB above what the process uses, every bomb
    is still a ConvertError that says it was refused (a MemoryError would say otherwise)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux's /proc to measure the address space")
    bombs = {
        "long_binput": b"\x80\x04}r" + (2**32 - 1).to_bytes(4, "little") + b".",
        "bytes8": b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"x.",
        "frame": b"\x80\x04\x95" + (2**40).to_bytes(8, "little") + b"}.",
    }
    for name, data in bombs.items():
        write_metadata(tmp_path / name, data)
    code = textwrap.dedent(
        f"""
        import json, resource, re
        import torch.distributed.checkpoint
        from hyperstate.tools.convert import ConvertError, read_dcp
        try:
            read_dcp("/nonexistent")  # imports what it needs, before the cap
        except ConvertError:
            pass
        vm = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read())[1])
        cap = vm * 1024 + (1 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
        out = {{}}
        for name in {sorted(bombs)!r}:
            try:
                read_dcp({str(tmp_path)!r} + "/" + name)
                out[name] = "read"
            except ConvertError as e:
                out[name] = str(e)
        print(json.dumps(out))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert all("refused: " in text for text in out.values()), out


# -- what the pickle names ----------------------------------------------------------------


def test_naming_a_lazily_imported_torch_module_imports_nothing(tmp_path: Path) -> None:
    """``getattr(torch, "onnx")`` would import torch.onnx (and ``_dynamo`` torch._dynamo):
    a name is checked against the dtypes in ``vars(torch)`` instead. In a fresh process,
    so that nothing else imported them first."""
    names = [("torch", "_dynamo"), ("torch", "onnx"), ("torch._dynamo", "config")]
    names += [("torch.onnx", "export")]
    for i, (module, name) in enumerate(names):
        write_metadata(tmp_path / str(i), PROTO2 + global_(module, name) + b".")
    code = textwrap.dedent(
        f"""
        import json, sys
        import torch, torch.distributed.checkpoint
        from hyperstate.tools.convert import ConvertError, read_dcp
        lazy = ("torch._dynamo", "torch.onnx")
        before = [m for m in lazy if m in sys.modules]
        errors = []
        for i in range({len(names)}):
            try:
                read_dcp({str(tmp_path)!r} + "/" + str(i))
                errors.append(None)
            except ConvertError as e:
                errors.append(str(e))
        after = [m for m in lazy if m in sys.modules]
        print(json.dumps({{"before": before, "after": after, "errors": errors}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    if out["before"]:
        pytest.skip(f"importing torch imports {out['before']} already")
    assert out["after"] == []
    for (module, name), error in zip(names, out["errors"], strict=True):
        assert error is not None and f"refusing {module}.{name}" in error


def call(module: str, name: str, arg: bytes) -> bytes:
    """A pickle of ``module.name(arg)`` (REDUCE)."""
    return PROTO2 + global_(module, name) + arg + b"\x85R."


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (call("torch", "Size", b"}" + unicode("a") + b"K\x01s"), "TypeError"),
        (call("torch.serialization", "_get_layout", unicode("nope")), "KeyError: 'nope'"),
        (call("collections", "OrderedDict", b"K\x01"), "TypeError"),
        (call(DCP_METADATA, "_MEM_FORMAT_ENCODING", b"K\x07"), "ValueError"),
        (call("pathlib", "PurePosixPath", b"N"), "TypeError"),
        (call("torch", "float32", b"K\x01"), "TypeError"),
        (PROTO2 + global_("torch", "float32") + b")\x81.", "must be a type"),
        (PROTO2 + global_("pathlib._local", "Path") + b".", "ModuleNotFound|DCP Metadata"),
        (PROTO2 + global_("builtins", "eval") + b".", "refusing builtins.eval"),
    ],
    ids=[
        "Size of a dict",
        "unknown layout",
        "OrderedDict of an int",
        "unknown memory format",
        "path of None",
        "call a dtype",
        "NEWOBJ of a dtype",
        "pathlib._local",
        "eval",
    ],
)
def test_an_allowed_class_called_with_bad_arguments_is_a_convert_error(
    tmp_path: Path, data: bytes, found: str
) -> None:
    directory = write_metadata(tmp_path / "dcp", data)
    with pytest.raises(ConvertError, match=found):
        read_dcp(str(directory))


def test_build_on_a_class_or_an_enum_member_is_refused(tmp_path: Path) -> None:
    """BUILD sets attributes: on a class or an enum member named by the pickle it would
    change them for the whole process."""
    from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING, Metadata

    state = b"N}" + unicode("version") + unicode("pwned") + b"s\x86b."
    on_class = PROTO2 + global_(DCP_METADATA, "Metadata") + state
    on_member = PROTO2 + global_(DCP_METADATA, "_MEM_FORMAT_ENCODING") + b"K\x00\x85R"
    on_member += b"N}" + unicode("_name_") + unicode("pwned") + b"s\x86b."
    at = len(on_class) - 2
    with pytest.raises(ConvertError, match=rf"BUILD at byte {at} sets attributes of .*\.Metadata"):
        read_dcp(str(write_metadata(tmp_path / "class", on_class)))
    with pytest.raises(ConvertError, match="sets attributes of a value that is not a new DCP"):
        read_dcp(str(write_metadata(tmp_path / "member", on_member)))
    assert Metadata.version is None
    assert _MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT.name == "TORCH_CONTIGUOUS_FORMAT"


def test_a_metadata_file_over_the_bound_is_refused(
    original: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = (original / ".metadata").stat().st_size
    monkeypatch.setattr(convert, "_MAX_METADATA_BYTES", size - 1)
    with pytest.raises(ConvertError, match=f"expected at most {size - 1} bytes, found more"):
        read_dcp(str(original))


# -- the records, before DCP reads them ---------------------------------------------------


def only_storage(metadata: Any) -> Any:
    """The storage record of the checkpoint's ``model.w``."""
    return next(v for k, v in metadata.storage_data.items() if k.fqn == "model.w")


def test_a_relative_path_out_of_the_directory_is_never_read(
    ckpt: Path, dcp_never_reads: None
) -> None:
    data_file = next(ckpt.glob("*.distcp"))
    shutil.copy(data_file, ckpt.parent / "outside.bin")

    def outside(metadata: Any) -> None:
        for info in metadata.storage_data.values():
            info.relative_path = "../outside.bin"

    rewrite(ckpt, outside)
    with pytest.raises(ConvertError, match=r"relative_path: .*inside the checkpoint directory"):
        read_dcp(str(ckpt))


@pytest.mark.parametrize("path", ["/etc/passwd", "sub/../../x", "C:/x", "s3://b/x", "a\\b"])
def test_a_relative_path_that_is_not_plain_is_refused(
    ckpt: Path, dcp_never_reads: None, path: str
) -> None:
    rewrite(ckpt, lambda m: setattr(only_storage(m), "relative_path", path))
    with pytest.raises(ConvertError, match=r"storage_data\['model.w' at \(0, 0\)\]"):
        read_dcp(str(ckpt))


def test_a_link_out_of_the_directory_is_never_read(ckpt: Path, dcp_never_reads: None) -> None:
    data_file = next(ckpt.glob("*.distcp"))
    outside = ckpt.parent / "outside.bin"
    data_file.rename(outside)
    data_file.symlink_to(outside)
    with pytest.raises(ConvertError, match="expected a file inside"):
        read_dcp(str(ckpt))


def test_a_fifo_for_a_data_file_never_hangs(ckpt: Path) -> None:
    data_file = next(ckpt.glob("*.distcp"))
    data_file.unlink()
    os.mkfifo(data_file)
    code = f"""
from hyperstate.tools.convert import ConvertError, read_dcp
try:
    read_dcp({str(ckpt)!r})
except ConvertError as e:
    print(e)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "expected a regular file, found a FIFO" in done.stdout


def test_a_missing_data_file_is_named(ckpt: Path, dcp_never_reads: None) -> None:
    next(ckpt.glob("*.distcp")).unlink()
    with pytest.raises(ConvertError, match=r"__0_0.distcp: no such file"):
        read_dcp(str(ckpt))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("offset", -1, r"\.offset: expected a byte offset \(an int >= 0\), found -1"),
        ("offset", 1 << 40, r"expected at least 1099511\d+ bytes \(entry 'model.w' ends"),
        ("length", 3, r"chunks\[0\]: expected its 24 bytes \(torch.float32 \[2, 3\]\) in "),
        ("length", "10", r"\.length: expected a byte count \(an int >= 0\), found '10'"),
        ("offset", True, r"\.offset: expected a byte offset"),
        ("offset", 0, r"found '.*' and '.*' sharing bytes of __0_0.distcp"),
        ("transform_descriptors", ["zstd"], "compressed or otherwise transformed"),
    ],
)
def test_a_byte_range_outside_its_file_is_refused(
    ckpt: Path, dcp_never_reads: None, field: str, value: Any, message: str
) -> None:
    rewrite(ckpt, lambda m: setattr(only_storage(m), field, value))
    with pytest.raises(ConvertError, match=message):
        read_dcp(str(ckpt))


def huge(metadata: Any) -> None:
    entry = metadata.state_dict_metadata["model.w"]
    entry.size = torch.Size([10**13])
    entry.chunks[0].offsets, entry.chunks[0].sizes = torch.Size([0]), torch.Size([10**13])
    key = next(k for k in metadata.storage_data if k.fqn == "model.w")
    info = metadata.storage_data.pop(key)
    metadata.storage_data[type(key)("model.w", (0,), 0)] = info


def huge_size_only(metadata: Any) -> None:
    metadata.state_dict_metadata["model.w"].size = torch.Size([10**13, 3])


def no_storage(metadata: Any) -> None:
    metadata.storage_data = {k: v for k, v in metadata.storage_data.items() if k.fqn != "epoch"}


def overlapping_chunks(metadata: Any) -> None:
    entry = metadata.state_dict_metadata["model.w"]
    chunk = entry.chunks[0]
    entry.chunks = [chunk, type(chunk)(torch.Size([1, 0]), torch.Size([1, 3]))]
    entry.size = torch.Size([3, 3])
    key = next(k for k in metadata.storage_data if k.fqn == "model.w")
    metadata.storage_data[type(key)("model.w", (1, 0), 1)] = metadata.storage_data[key]


def chunk_of_another_rank(metadata: Any) -> None:
    metadata.state_dict_metadata["model.w"].chunks[0].sizes = torch.Size([2])


def dtype_of(value: Any) -> Callable[[Any], None]:
    def change(metadata: Any) -> None:
        metadata.state_dict_metadata["model.w"].properties.dtype = value

    return change


def planner(change: Callable[[dict[str, Any]], None]) -> Callable[[Any], None]:
    return lambda metadata: change(metadata.planner_data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (huge, r"chunks\[0\]: expected its 40000000000000 bytes"),
        (huge_size_only, r"the chunks of a \[10000000000000, 3\] tensor cover 6 of"),
        (overlapping_chunks, r"the chunks of a \[3, 3\] tensor overlap"),
        (chunk_of_another_rank, r"offsets and sizes as a torch.Size of 2 dims each"),
        (no_storage, r"state_dict_metadata\['epoch'\]: expected an entry in storage_data"),
        (dtype_of("float32"), r"properties: expected TensorProperties with a torch dtype"),
        (dtype_of(torch.strided), r"properties: expected TensorProperties with a torch dtype"),
        (lambda m: setattr(m, "state_dict_metadata", []), r"state_dict_metadata: expected a dict"),
        (lambda m: setattr(m, "storage_data", None), r"storage_data: expected a dict"),
        (lambda m: setattr(m, "storage_meta", "x"), r"storage_meta: expected None or a Stor"),
        (lambda m: setattr(m, "planner_data", [1]), r"planner_data: expected a dict, found \[1\]"),
        (planner(lambda p: p.update({"epoch": ("epoch", 0)})), r"joins to 'epoch', found"),
        (planner(lambda p: p.update({"epoch": "epoch"})), r"found 'epoch'"),
        (planner(lambda p: p.update({"epoch": ("model", "w")})), "joins to 'epoch'"),
        (
            planner(lambda p: p.update({"opt.groups.1.t": ("opt", "groups", 7, "t")})),
            r"joins to 'opt.groups.1.t'",
        ),
    ],
    ids=[
        "10**13 elements",
        "size past its chunks",
        "overlapping chunks",
        "chunk rank",
        "no storage",
        "dtype a string",
        "dtype a layout",
        "entries a list",
        "storage none",
        "storage meta",
        "planner data a list",
        "path joins elsewhere",
        "path a string",
        "path of another key",
        "list index changed",
    ],
)
def test_records_that_do_not_describe_the_files_are_refused(
    ckpt: Path, dcp_never_reads: None, change: Callable[[Any], None], message: str
) -> None:
    rewrite(ckpt, change)
    with pytest.raises(ConvertError, match=message):
        read_dcp(str(ckpt))


def rename(metadata: Any, fqn: str, path: tuple[str | int, ...]) -> None:
    """Move entry ``fqn`` (its records, where it is stored, its key path) to ``path``."""
    new = ".".join(map(str, path))
    metadata.state_dict_metadata[new] = metadata.state_dict_metadata.pop(fqn)
    for key in [k for k in metadata.storage_data if k.fqn == fqn]:
        metadata.storage_data[type(key)(new, key.offset, key.index)] = metadata.storage_data.pop(
            key
        )
    del metadata.planner_data[fqn]
    metadata.planner_data[new] = path


def test_key_paths_that_disagree_are_refused(tmp_path: Path, dcp_never_reads: None) -> None:
    """A value that is also a dict, a dict that is also a list, and a list with a gap
    that DCP would grow to 2**40 items."""
    dcp_save({"a": {"b": torch.ones(1)}, "a.b.c": torch.ones(1), "x": [torch.ones(1)]}, tmp_path)
    rewrite(tmp_path, lambda m: m.planner_data.update({"a.b.c": ("a", "b", "c")}))
    with pytest.raises(ConvertError, match=r"making \['a', 'b'\] both a (value|dict) and a"):
        read_dcp(str(tmp_path))

    rewrite(tmp_path, lambda m: rename(m, "a.b.c", ("a", 0)))
    with pytest.raises(ConvertError, match=r"making \['a'\] both a (dict|list) and a"):
        read_dcp(str(tmp_path))

    dcp_save({"x": [torch.ones(1)]}, tmp_path / "gap")
    rewrite(tmp_path / "gap", lambda m: rename(m, "x.0", ("x", 2**40)))
    with pytest.raises(ConvertError, match=r"lists without gaps, found one of 1 items reaching"):
        read_dcp(str(tmp_path / "gap"))


def test_records_without_fields_are_refused(tmp_path: Path, dcp_never_reads: None) -> None:
    """NEWOBJ without BUILD: a record whose fields were never set."""
    directory = write_metadata(tmp_path, PROTO2 + global_(DCP_METADATA, "Metadata") + b")\x81.")
    with pytest.raises(
        ConvertError, match=r"state_dict_metadata: expected a dict .* found nothing"
    ):
        read_dcp(str(directory))
    write_metadata(tmp_path, pickle.dumps({"state_dict_metadata": {}}))
    with pytest.raises(ConvertError, match=r"expected DCP Metadata, found \{'state_dict_metadata'"):
        read_dcp(str(directory))


def test_a_value_that_does_not_load_is_a_convert_error(ckpt: Path) -> None:
    """Damage past the metadata: what DCP then fails on is a ConvertError too."""
    data_file = next(ckpt.glob("*.distcp"))
    data = bytearray(data_file.read_bytes())
    data[:64] = b"\0" * 64
    data_file.write_bytes(bytes(data))
    with pytest.raises(ConvertError, match=re.escape(str(ckpt))):
        read_dcp(str(ckpt))


def test_a_checkpoint_on_fsspec_is_checked_the_same(original: Path) -> None:
    fs = fsspec.filesystem("memory")
    for file in original.iterdir():
        fs.pipe_file(f"/trust-dcp/{file.name}", file.read_bytes())
    try:
        assert read_dcp("memory://trust-dcp")["epoch"] == 3
        data_file = next(original.glob("*.distcp")).name
        fs.pipe_file(f"/trust-dcp/{data_file}", b"short")
        with pytest.raises(ConvertError, match=rf"{data_file}: expected at least \d+ bytes"):
            read_dcp("memory://trust-dcp")
    finally:
        fs.rm("/trust-dcp", recursive=True)


# -- any damage -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_dir(original: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(shutil.copytree(original, tmp_path_factory.mktemp("fuzz") / "ckpt"))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4
    ),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
@example(edits=[(0.0, 0x80)], cut=0.5)  # a pickle cut short
@example(edits=[(0.5, ord("r"))], cut=None)  # an opcode turned into LONG_BINPUT
@example(edits=[(0.3, ord("b"))], cut=None)  # an opcode turned into BUILD
def test_any_damage_to_the_metadata_is_a_convert_error_or_a_state(
    original: Path, fuzz_dir: Path, edits: list[tuple[float, int]], cut: float | None
) -> None:
    data = bytearray((original / ".metadata").read_bytes())
    for where, byte in edits:
        data[int(where * len(data))] = byte
    if cut is not None:
        data = data[: int(cut * len(data))]
    (fuzz_dir / ".metadata").write_bytes(bytes(data))
    try:
        state = read_dcp(str(fuzz_dir))
    except ConvertError:
        return
    assert isinstance(state, dict)


# -- the command ----------------------------------------------------------------------------


def test_the_command_refuses_a_hostile_checkpoint_with_one_line(ckpt: Path, tmp_path: Path) -> None:
    secret = tmp_path / "outside.bin"
    secret.write_text("SECRET")
    rewrite(ckpt, lambda m: setattr(only_storage(m), "relative_path", "../outside.bin"))
    line = one_error_line(hs("convert", str(ckpt), str(tmp_path / "run")), "convert")
    assert ".metadata: storage_data['model.w' at (0, 0)].relative_path" in line
    assert "SECRET" not in line

    bomb = write_metadata(tmp_path / "bomb", b"\x80\x04}r" + (2**30).to_bytes(4, "little") + b".")
    line = one_error_line(hs("convert", str(bomb), str(tmp_path / "run")), "convert")
    assert "refused: LONG_BINPUT at byte 3 stores memo entry 1073741824" in line
    assert not (tmp_path / "run").exists()
