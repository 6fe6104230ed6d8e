"""Damaged or hostile input never crashes, hangs or loads garbage; a reader never breaks a
writer (DESIGN invariants 8-10). Each test reproduces one finding of the trust campaign."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import hyperstate
from hyperstate.edits import request_edit
from hyperstate.storage import CheckpointStore
from hyperstate.tensors import BlobWriter

# -- 1. a live edit never stops a run ----------------------------------------------------


@dataclass
class EditConfig:
    lr: float = 0.1
    extra: Any = None


@dataclass
class Step:
    step: int = 0


def edit_run(run: Path) -> hyperstate.StateManager[EditConfig, Step]:
    return hyperstate.StateManager(
        EditConfig, Step, lambda c: Step(), None, run, "step", edit_check_seconds=0
    )


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ("lr=1" + "0" * 400, "an integer too large for one"),
        ("extra=Some({(a: 1): 2})", None),  # a struct as a map key: applied, and it saves
        ("extra=[1, 2", "cannot parse value"),
    ],
    ids=["huge integer for a float", "struct map key", "unclosed list"],
)
def test_a_bad_live_edit_is_rejected_and_the_run_goes_on(
    tmp_path: Path, override: str, reason: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    hs = edit_run(tmp_path)
    request = request_edit(tmp_path, [override])
    with caplog.at_level(logging.WARNING, logger="hyperstate"):
        for _ in range(3):
            hs.state.step += 1
            hs.step()  # never raises, whatever the request holds
    hs.close()
    if reason is None:
        assert Path(request + ".applied").exists()
    else:
        assert reason in Path(request + ".rejected").read_text()
        assert "rejected live edit" in caplog.text
        assert hs.config.lr == 0.1
    # A restarted run resumes and goes on too: the request was handled once.
    again = edit_run(tmp_path)
    again.state.step += 1
    again.step()
    assert again.state.step == 4
    again.close()


# -- 2. reading a run never deletes --------------------------------------------------------


def test_resuming_never_deletes_a_save_in_progress_and_the_writer_cleans_its_own(
    tmp_path: Path,
) -> None:
    writer = edit_run(tmp_path)
    writer.state.step = 1
    writer.checkpoint()
    writer.wait()  # its pruning and cleanup run in the background after the commit
    # Another process's save in progress (no COMMITTED yet), and a crashed one before it.
    in_progress = tmp_path / "step-000000000005"
    (in_progress / "blobs").mkdir(parents=True)
    (in_progress / "config.ron").write_text("EditConfig()")
    abandoned = tmp_path / "step-000000000000"
    abandoned.mkdir()
    reader = edit_run(tmp_path)  # a second process opening the run
    assert reader.resumed_from is not None and reader.resumed_from.number == 1
    reader.close()
    assert in_progress.exists() and abandoned.exists()
    # The writer removes what its own commit made obsolete: older, uncommitted.
    writer.state.step = 3
    writer.checkpoint()
    writer.wait()
    assert not abandoned.exists() and in_progress.exists()
    writer.close()


def test_a_blob_write_that_fails_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "blobs").write_text("a file where the blob folder should be")
    writer = BlobWriter(tmp_path, "blobs/rank-00000.safetensors")
    writer.add("x", torch.ones(3))
    with pytest.raises(hyperstate.StorageError, match=r"write .*rank-00000\.safetensors"):
        writer.write()


# -- 3. shards tile their tensor exactly ---------------------------------------------------


@dataclass
class Model:
    model: dict[str, torch.Tensor]


def sharded_state(tmp_path: Path, shape: tuple[int, ...], shards: list[tuple[int, ...]]) -> Path:
    """A committed checkpoint whose tensor ``t`` is a sharded record over one real entry
    of 4 floats, placed at each offset of ``shards``."""
    from hyperstate import ron
    from hyperstate.tools.convert import write_checkpoint

    info = write_checkpoint({"t": torch.arange(4.0)}, tmp_path, number=1)
    state = Path(info.path) / "state.ron"
    tree = ron.loads(state.read_text())
    record = tree.fields["model"]["t"]
    entry = {k: v for k, v in record.fields.items() if k != "dtype"}
    parts = [ron.Struct("Shard", {"at": at, **entry}) for at in shards]
    tree.fields["model"]["t"] = ron.Struct(
        "Tensor", {"dtype": "float32", "shape": shape, "shards": parts}
    )
    state.write_text(ron.dumps(tree) + "\n")
    return state


@pytest.mark.parametrize(
    ("shape", "shards", "message"),
    [
        ((4096,), [(0,)], "cover 4 of 4096 elements"),
        ((10**13,), [], "cover 0 of 10000000000000 elements"),
        ((8,), [(0,), (2,)], "overlap"),
        ((4,), [(2,)], "do not fit"),
        ((2, 4), [(0, 0), (1, 0)], "malformed sharded tensor"),
    ],
    ids=["holes", "huge and empty", "overlap", "out of bounds", "wrong rank"],
)
def test_shards_that_do_not_tile_their_tensor_are_refused_before_any_allocation(
    tmp_path: Path, shape: tuple[int, ...], shards: list[tuple[int, ...]], message: str
) -> None:
    from hyperstate.tools.convert import export_safetensors

    state = sharded_state(tmp_path, shape, shards)
    with pytest.raises(hyperstate.HyperstateError, match=message) as info:
        hyperstate.load(Model, state)
    assert "model.t" in str(info.value) or "model" in str(info.value)
    with pytest.raises(hyperstate.HyperstateError, match=message):
        export_safetensors(state.parent, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_shards_that_tile_their_tensor_load_whole(tmp_path: Path) -> None:
    state = sharded_state(tmp_path, (12,), [(8,), (0,), (4,)])
    loaded = hyperstate.load(Model, state)
    assert torch.equal(loaded.model["t"], torch.arange(4.0).repeat(3))


# -- 3b. a Grid record is checked whole, and each shard against its file ----------------------


def grid_files(tmp_path: Path, **kwargs: Any) -> Path:
    """A state.ron whose tensor ``t`` (10 x 3) is a Grid over 4 ranks: 3 + 3 + 3 + 1 rows."""
    from test_compact_shards import grid_state

    return grid_state(tmp_path, torch.arange(30.0).reshape(10, 3), (4,), (0,), **kwargs)


def edit_grid(state: Path, tensor: dict[str, Any], grid: dict[str, Any]) -> None:
    from hyperstate import ron

    tree = ron.loads(state.read_text())
    record = tree.fields["t"]
    record.fields.update(tensor)
    record.fields["shards"].fields.update(grid)
    state.write_text(ron.dumps(tree) + "\n")


def entry_range(blob: Path, key: str) -> tuple[int, int]:
    data = blob.read_bytes()
    length = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8 : 8 + length])[key]["data_offsets"]
    return 8 + length + start, 8 + length + end


@pytest.mark.parametrize(
    ("tensor", "grid", "message"),
    [
        ({}, {"mesh": (0,)}, "expected mesh as a tuple of positive ints"),
        ({}, {"mesh": (1 << 30,)}, "with at most 16777216 ranks"),
        ({}, {"dims": (0, 1)}, "expected dims as one tensor dimension"),
        ({}, {"dims": (2,)}, "expected dims as one tensor dimension"),
        ({}, {"order": (1,)}, "expected order as a permutation"),
        ({}, {"files": "../rank-#####.safetensors"}, r"'\.\.'|\.\."),
        ({}, {"files": "/abs/rank-#.safetensors"}, "relative"),
        ({}, {"files": "blobs/rank.safetensors"}, "one run of 1 to 12 '#'"),
        ({}, {"files": "blobs/#/rank-#.safetensors"}, "one run of 1 to 12 '#'"),
        ({}, {"key": ""}, "expected key as a non-empty string"),
        ({}, {"extra": 1}, r"with field\(s\) extra"),
        ({"dtype": "float99"}, {}, "expected a dtype name"),
        ({"device": "meta"}, {}, "expected a device"),
        ({"shape": (10, -3)}, {}, "non-negative ints"),
    ],
    ids=[
        "empty mesh dim",
        "too many ranks",
        "dims per mesh dim",
        "dim out of range",
        "order",
        "files outside",
        "files absolute",
        "files without rank",
        "files with two ranks",
        "no key",
        "unknown field",
        "dtype",
        "device",
        "negative shape",
    ],
)
def test_a_malformed_grid_record_is_refused(
    tmp_path: Path, tensor: dict[str, Any], grid: dict[str, Any], message: str
) -> None:
    state = grid_files(tmp_path)
    edit_grid(state, tensor, grid)
    with pytest.raises(hyperstate.ConfigError, match="malformed sharded tensor") as info:
        hyperstate.load(GridTable, state)
    assert re.search(message, str(info.value)) and "t" in str(info.value)


@dataclass
class GridTable:
    t: torch.Tensor


def test_a_grid_whose_files_do_not_follow_it_is_refused(tmp_path: Path) -> None:
    """Each shard read must be an entry of exactly the rule's shape: a wrong rule, or a
    shape that would overflow memory, fails on the first header, before any allocation."""
    state = grid_files(tmp_path)
    edit_grid(state, {}, {"mesh": (3,)})  # 4 + 4 + 2 rows: rank 0 holds 3
    with pytest.raises(hyperstate.BlobError, match=r"expected F32 \[4, 3\].*found F32 \[3, 3\]"):
        hyperstate.load(GridTable, state)
    edit_grid(state, {"shape": (2**61, 3)}, {"mesh": (4,)})
    with pytest.raises(hyperstate.BlobError, match=r"expected F32 \[576460752303423488, 3\]"):
        hyperstate.load(GridTable, state)


def test_a_grid_shard_that_is_missing_or_corrupt_is_an_error_naming_it(tmp_path: Path) -> None:
    state = grid_files(tmp_path)
    blob = tmp_path / "blobs" / "rank-00001.safetensors"
    data = bytearray(blob.read_bytes())
    start, _ = entry_range(blob, "t")
    blob.write_bytes(bytes(data[:start]) + bytes([data[start] ^ 1]) + bytes(data[start + 1 :]))
    with pytest.raises(hyperstate.BlobError, match=r"rank-00001.*'t'.*expected checksum") as info:
        hyperstate.load(GridTable, state)
    assert "corrupted" in str(info.value)
    blob.write_bytes(bytes(data))
    # The file's own table is checked too: a checksum that is not the entry's is a mismatch.
    start, end = entry_range(blob, "__checksums__")
    table = json.loads(data[start:end])
    table["t"] = table["other"]
    blob.write_bytes(bytes(data[:start]) + json.dumps(table, separators=(",", ":")).encode())
    with pytest.raises(hyperstate.BlobError, match=r"rank-00001.*expected checksum"):
        hyperstate.load(GridTable, state)
    for bad, message in [
        (b"[]".ljust(end - start), "found list"),
        (b"{".ljust(end - start), "invalid JSON"),
        (json.dumps({"nothing": table["t"]}).encode().ljust(end - start), "no entry of the file"),
        (json.dumps({"t": "xxh3-64:0"}).encode().ljust(end - start), "'xxh3-64:0' for 't'"),
    ]:
        blob.write_bytes(bytes(data[:start]) + bad)
        with pytest.raises(
            hyperstate.BlobError, match=f"expected a table of entry checksums.*{message}"
        ):
            hyperstate.load(GridTable, state)
    (tmp_path / "blobs" / "rank-00002.safetensors").unlink()
    blob.write_bytes(bytes(data))
    with pytest.raises(hyperstate.BlobError, match=r"rank-00002.*does not exist"):
        hyperstate.load(GridTable, state)


def test_a_grid_shard_without_a_table_is_checked_against_its_whole_file(tmp_path: Path) -> None:
    """A file without its checksum table (as a record that lost its checksum) is not
    unverified: COMMITTED's checksum of the whole file covers it, or it is refused."""
    from hyperstate import _fs, ron
    from hyperstate.tensors import BlobReader, codec

    state = grid_files(tmp_path, checksums=False)
    with pytest.raises(hyperstate.BlobError, match="expected a checksum in the record, found none"):
        hyperstate.load(GridTable, state)
    blobs = sorted((tmp_path / "blobs").iterdir())
    sums = {f"blobs/{b.name}": _fs.checksum(b.read_bytes()) for b in blobs}
    record = ron.loads(state.read_text()).fields["t"]

    def reader_of(file: str) -> BlobReader:
        return BlobReader(tmp_path, file, file_checksum=sums[file])

    full = codec.read(record, ("t",), reader_of)
    assert torch.equal(full, torch.arange(30.0).reshape(10, 3))
    data = bytearray(blobs[3].read_bytes())
    data[entry_range(blobs[3], "t")[0]] ^= 1
    blobs[3].write_bytes(bytes(data))
    with pytest.raises(hyperstate.BlobError, match="expected the file checksum"):
        codec.read(record, ("t",), reader_of)


# -- 5 and 12: a corrupt checkpoint is never loaded, and never blocks resume -------------------


@dataclass
class Weights:
    step: int = 0
    w: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(64))


def weights_run(run: Path, **kwargs: Any) -> hyperstate.StateManager[EditConfig, Weights]:
    return hyperstate.StateManager(
        EditConfig, Weights, lambda c: Weights(), None, run, "step", **kwargs
    )


def two_checkpoints(run: Path) -> None:
    hs = weights_run(run)
    for step in (1, 2):
        hs.state.step = step
        hs.state.w = torch.full((64,), float(step))
        hs.checkpoint()
    hs.close()


def flip_a_data_byte(checkpoint: Path) -> None:
    blob = checkpoint / "blobs" / "rank-00000.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x40
    blob.write_bytes(bytes(data))


def test_resume_skips_a_corrupt_newest_checkpoint_and_keeps_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    two_checkpoints(tmp_path)
    newest = tmp_path / "step-000000000002"
    flip_a_data_byte(newest)
    with caplog.at_level(logging.WARNING, logger="hyperstate"):
        hs = weights_run(tmp_path, policy=hyperstate.CheckpointPolicy(keep_last=1))
    assert hs.resumed_from is not None and hs.resumed_from.number == 1
    assert torch.equal(hs.state.w, torch.full((64,), 1.0))
    assert "skipping checkpoint" in caplog.text and "step-000000000002" in caplog.text
    assert "checksum" in caplog.text
    # Retention does not count it, and never deletes it; saving step 2 again sets it aside.
    hs.state.step = 2
    hs.checkpoint()
    hs.close()
    aside = [p.name for p in tmp_path.iterdir() if p.name.startswith("corrupt-step-000000000002")]
    assert len(aside) == 1
    store = CheckpointStore(str(tmp_path))
    assert [i.number for i in store.list()] == [2] and store.verify(2) == []


def test_resume_skips_a_checkpoint_with_a_file_missing(tmp_path: Path) -> None:
    two_checkpoints(tmp_path)
    (tmp_path / "step-000000000002" / "blobs" / "rank-00000.safetensors").unlink()
    hs = weights_run(tmp_path)
    assert hs.resumed_from is not None and hs.resumed_from.number == 1
    hs.close()


def test_a_record_without_its_checksum_is_checked_against_committed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    two_checkpoints(tmp_path)
    newest = tmp_path / "step-000000000002"
    state = newest / "state.ron"
    text = state.read_text()
    stripped = "\n".join(line for line in text.splitlines() if "checksum:" not in line) + "\n"
    state.write_text(stripped)
    # Edited but sound: the whole file's checksum in COMMITTED covers the bytes.
    with caplog.at_level(logging.WARNING, logger="hyperstate"):
        hs = weights_run(tmp_path)
    assert hs.resumed_from is not None and hs.resumed_from.number == 2
    assert torch.equal(hs.state.w, torch.full((64,), 2.0))
    assert "state.ron was edited since it was committed" in caplog.text
    hs.close()
    # Edited and corrupted: the corruption is found, and the run resumes from step 1.
    flip_a_data_byte(newest)
    hs = weights_run(tmp_path)
    assert hs.resumed_from is not None and hs.resumed_from.number == 1
    hs.close()
    # A direct load has no COMMITTED to check against: refused unless asked not to verify.
    with pytest.raises(hyperstate.BlobError, match="no checksum"):
        hyperstate.load(Weights, state)
    unchecked = hyperstate.load(Weights, state, verify=False)
    assert unchecked.step == 2


# -- 4. every blob header is checked whole, however few entries are read ----------------


BLOB = "blobs/rank-00000.safetensors"
HYPERSTATE = str(Path(sys.executable).with_name("hyperstate"))


def two_entry_blob(directory: Path) -> tuple[Path, list[Any]]:
    writer = BlobWriter(directory, BLOB)
    writer.add("a", torch.arange(4.0))
    writer.add("b", torch.arange(2.0))
    return directory / BLOB, writer.write()


def split_blob(path: Path) -> tuple[dict[str, Any], bytes]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_blob(path: Path, header: dict[str, Any], body: bytes) -> None:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + body)


def read_first(directory: Path, refs: list[Any]) -> torch.Tensor:
    with hyperstate.tensors.BlobReader(directory, BLOB) as reader:
        value = reader.read(refs[0])
        assert isinstance(value, torch.Tensor)
        return value.clone()


def test_bytes_appended_to_a_blob_file_are_found(tmp_path: Path) -> None:
    path, refs = two_entry_blob(tmp_path)
    with path.open("ab") as f:
        f.write(b"\0" * (1 << 20))
    with pytest.raises(hyperstate.BlobError, match="expected the data to end at byte"):
        read_first(tmp_path, refs)


def test_a_header_that_is_not_json_is_found(tmp_path: Path) -> None:
    path, refs = two_entry_blob(tmp_path)
    data = bytearray(path.read_bytes())
    data[8] = ord("z")  # the header's opening brace
    path.write_bytes(bytes(data))
    with pytest.raises(hyperstate.BlobError, match="JSON"):
        read_first(tmp_path, refs)


def test_an_entry_placed_inside_another_is_found(tmp_path: Path) -> None:
    path, refs = two_entry_blob(tmp_path)
    header, body = split_blob(path)
    # b's two floats now alias the last two of a (and the checksum in b's ref still
    # matches, since those bytes are a's 2.0 and 3.0 only if we make it so: we don't need
    # to, the layout alone must be refused); the tail that was b's is left over.
    header["b"]["data_offsets"] = [8, 16]
    join_blob(path, header, body)
    with pytest.raises(hyperstate.BlobError, match="overlap"):
        read_first(tmp_path, refs)


@pytest.mark.parametrize("dtype", [["F32"], {"F32": 1}, 5, None])
def test_a_header_dtype_of_the_wrong_type_is_a_blob_error(tmp_path: Path, dtype: Any) -> None:
    path, refs = two_entry_blob(tmp_path)
    header, body = split_blob(path)
    header["b"]["dtype"] = dtype
    join_blob(path, header, body)
    with pytest.raises(hyperstate.BlobError, match="expected a dtype"):
        read_first(tmp_path, refs)


def test_every_single_byte_change_of_a_header_is_refused_or_harmless(tmp_path: Path) -> None:
    path, refs = two_entry_blob(tmp_path)
    original = path.read_bytes()
    length = int.from_bytes(original[:8], "little")
    expected = torch.arange(4.0)
    accepted = 0
    for position in range(8 + length):
        for flip in (0x01, 0x20, 0x80):
            data = bytearray(original)
            data[position] ^= flip
            path.write_bytes(bytes(data))
            try:
                value = read_first(tmp_path, refs)
            except hyperstate.HyperstateError:
                continue
            # Accepted only where the change means nothing: the value read is the same.
            assert torch.equal(value, expected), (position, flip)
            accepted += 1
    # Only changes inside the padding or JSON whitespace can mean nothing.
    assert accepted < 3 * 8


# -- 7. special files: only regular files inside the checkpoint are read -------------------


def committed(run: Path) -> Path:
    two_checkpoints(run)
    return run / "step-000000000002"


def replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def run_guarded(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child Python, so that a hang fails the test instead of the suite."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("name", ["state.ron", "config.ron", "COMMITTED", BLOB])
def test_a_fifo_in_a_checkpoint_never_hangs(tmp_path: Path, name: str) -> None:
    checkpoint = committed(tmp_path)
    replace_with_fifo(checkpoint / name)
    code = f"""
import hyperstate, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_trust import weights_run
hs = weights_run({str(tmp_path)!r})
print(hs.resumed_from.number if hs.resumed_from else None)
hs.close()
for path in ({str(checkpoint / "state.ron")!r}, {str(checkpoint)!r}):
    try:
        hyperstate.load(__import__("test_trust").Weights, path)
    except hyperstate.HyperstateError as e:
        print("refused:", str(e).splitlines()[0])
"""
    done = run_guarded(code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "1"  # the checkpoint with the FIFO was skipped
    assert any("regular file" in line or "FIFO" in line for line in lines[1:]) or name in (
        "COMMITTED",
    ), done.stdout


def test_a_link_out_of_the_checkpoint_is_never_read_nor_quoted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = committed(tmp_path / "run")
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:SECRET-LINE\n")
    (checkpoint / "state.ron").unlink()
    (checkpoint / "state.ron").symlink_to(secret)
    with caplog.at_level(logging.WARNING, logger="hyperstate"):
        hs = weights_run(tmp_path / "run")
    assert hs.resumed_from is not None and hs.resumed_from.number == 1
    hs.close()
    assert "SECRET" not in caplog.text and "inside" in caplog.text
    done = subprocess.run(
        [HYPERSTATE, "show", str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "SECRET" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_link_to_an_endless_device_is_refused(tmp_path: Path) -> None:
    checkpoint = committed(tmp_path)
    (checkpoint / "state.ron").unlink()
    (checkpoint / "state.ron").symlink_to("/dev/zero")
    with pytest.raises(hyperstate.StorageError, match="regular file"):
        hyperstate.load(Weights, checkpoint / "state.ron")
    hs = weights_run(tmp_path)
    assert hs.resumed_from is not None and hs.resumed_from.number == 1
    hs.close()


def test_a_text_file_over_the_size_bound_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.ron"
    big.write_bytes(b" " * 2048)
    assert hyperstate._fs.read_bytes(big, limit=4096) == b" " * 2048
    with pytest.raises(hyperstate.StorageError, match="at most 1024 bytes"):
        hyperstate._fs.read_bytes(big, limit=1024)


# -- 10. text that is not UTF-8 --------------------------------------------------------------


def test_text_that_is_not_utf8_is_a_located_parse_error(tmp_path: Path) -> None:
    checkpoint = committed(tmp_path)
    state = checkpoint / "state.ron"
    lines = state.read_bytes().split(b"\n")
    lines[1] = lines[1][:4] + b"\xff\xfe" + lines[1][4:]
    state.write_bytes(b"\n".join(lines))
    with pytest.raises(hyperstate.ParseError) as info:
        hyperstate.load(Weights, state)
    assert (info.value.line, info.value.col) == (2, 5)
    assert "UTF-8" in info.value.msg and "ff" in info.value.msg
    with pytest.raises(hyperstate.ParseError, match=r"state.ron:2:5: expected UTF-8"):
        weights_run(tmp_path)
    done = subprocess.run(
        [HYPERSTATE, "show", str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "state.ron:2:5" in done.stderr


# -- 8. crafted values in state.ron are located errors, never raw exceptions ---------------


class Counter(hyperstate.Serializable):
    def __init__(self) -> None:
        self.n, self.name = 0, "c"

    def serialize(self) -> Any:
        return {"n": self.n, "name": self.name}

    @classmethod
    def deserialize(cls, state: Any, ctx: dict[str, Any]) -> Counter:
        counter = cls()
        counter.n, counter.name = state["n"], state["name"]
        return counter


@dataclass
class Training:
    big: torch.Tensor
    view: torch.Tensor
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    counter: Counter


def training_state() -> Training:
    model = torch.nn.Linear(2, 2)
    big = torch.arange(8.0)
    return Training(big, big[2:5], model, torch.optim.Adam(model.parameters()), Counter())


@pytest.fixture(scope="module")
def training_text(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    directory = tmp_path_factory.mktemp("training")
    state = training_state()
    state.model(torch.ones(1, 2)).sum().backward()
    state.opt.step()
    hyperstate.dump(state, directory / "state.ron")
    return directory, (directory / "state.ron").read_text()


BIG = 'key: "big",\n        dtype: "float32",'
STEP = "value: 1.0,"
VIEW = "shape: (3,),\n        stride: (1,),"
BLOB_FILE = 'file: "blobs/rank-00000.safetensors"'
# case: (text, its replacement, error, what the message says, the value path it names)
CRAFTED: dict[str, tuple[str, str, type[Exception], str, str]] = {
    "inline value a string": (STEP, 'value: "abc",', hyperstate.ConfigError, "a number", "step"),
    "ragged inline value": (STEP, "value: [1.0, [2.0]],", hyperstate.ConfigError, "0-d", "step"),
    "device an int": (BIG, BIG + " device: 5,", hyperstate.BlobError, "a device", "big"),
    "device meta": (BIG, BIG + ' device: "meta",', hyperstate.BlobError, "'meta'", "big"),
    "optimizer params": ('"params": [', '"params": [7, ', hyperstate.StateError, "group", "opt"),
    "renamed module key": ('"weight"', '"weigh"', hyperstate.StateError, "Missing key", "model"),
    "Serializable missing a key": ('"name": "c",', "", hyperstate.StateError, "'name'", "counter"),
    "file a directory": (BLOB_FILE, 'file: "blobs"', hyperstate.BlobError, "directory", "big"),
    "view of 2**40 x 2**40": (
        VIEW,
        "shape: (1099511627776, 1099511627776),\n        stride: (1099511627776, 1),",
        hyperstate.BlobError,
        "at most the entry's 32 bytes",
        "view",
    ),
    "stride-0 view of 10**12": (
        VIEW,
        "shape: (1000000000000,),\n        stride: (0,),",
        hyperstate.BlobError,
        "at most the entry's 32 bytes",
        "view",
    ),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_state_value_is_a_located_error(
    training_text: tuple[Path, str], case: str
) -> None:
    directory, text = training_text
    old, new, error, message, where = CRAFTED[case]
    assert old in text
    crafted = directory / f"crafted-{list(CRAFTED).index(case)}.ron"
    crafted.write_text(text.replace(old, new, 1))
    with pytest.raises(error) as info:
        hyperstate.load(Training, crafted, initial_state=lambda config: training_state())
    shown = str(info.value)
    assert message in shown
    # Where: the file, the line and column of the value, and its path.
    assert re.search(rf"{crafted.name}:\d+:\d+: ", shown), shown
    assert re.search(rf"\bat (opt\.state\[0\]\.)?{where}\b", shown), shown


def test_an_expanded_view_round_trips_as_a_copy(tmp_path: Path) -> None:
    base = torch.arange(3.0)
    state = Model({"wide": base.expand(1000, 3), "base": base})
    hyperstate.dump(state, tmp_path / "state.ron")
    loaded = hyperstate.load(Model, tmp_path / "state.ron")
    assert torch.equal(loaded.model["wide"], base.expand(1000, 3))
    assert torch.equal(loaded.model["base"], base)
