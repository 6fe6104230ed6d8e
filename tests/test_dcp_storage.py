"""torch.distributed.checkpoint through hyperstate's storage layers (hyperstate.distributed.dcp).

An FSDP2 model with AdamW is saved by 4 gloo ranks (dcp.save and dcp.async_save) and
loaded by 2 (dcp.load resharding it), bit for bit; the directories are hyperstate
checkpoints (verify, show, load, export to a standard DCP directory); nothing in a
directory is ever unpickled, and values that are not plain data are refused at save.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import logging
import pickle
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
import torch.distributed.checkpoint as dcp
from dist_jobs.launch import launch
from filelock import FileLock
from test_distributed import ok
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException

import hyperstate
from hyperstate import ron
from hyperstate.distributed import StorageReader, StorageWriter
from hyperstate.distributed.dcp import plain_value
from hyperstate.errors import BlobError, StateError, StorageError
from hyperstate.storage import DCP_FILE, STATE_FILE, CheckpointStore, checkpoint_at
from hyperstate.tools.cli import main as hyperstate_main
from hyperstate.tools.convert import export_dcp

JOB = Path(__file__).resolve().parent / "dist_jobs" / "dcp_job.py"
SYNC = "sync/step-000000000002"
ASYNC = "async/step-000000000002"


@contextlib.contextmanager
def one_process() -> Iterator[None]:
    # DCP warns that with no process group it saves or loads from one process: as meant.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def failure(error: CheckpointException) -> BaseException:
    """What failed inside DCP's CheckpointException (the first failed rank's error)."""
    return next(iter(error.failures.values()))[0]


def assert_same(found: Any, expected: Any, where: str = "") -> None:
    """Equal trees: tensors bit for bit (dtype and shape too), other values by ==."""
    if isinstance(expected, dict):
        assert isinstance(found, dict) and found.keys() == expected.keys(), where
        for key, value in expected.items():
            assert_same(found[key], value, f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert type(found) is type(expected) and len(found) == len(expected), where
        for i, (a, b) in enumerate(zip(found, expected, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert isinstance(found, torch.Tensor) and found.dtype == expected.dtype, where
        assert torch.equal(found, expected), where
    else:
        assert found == expected and type(found) is type(expected), where


def zeros_like(tree: Any) -> Any:
    """A state dict to load into: the same keys, zero tensors, other values replaced."""
    if isinstance(tree, dict):
        return {k: zeros_like(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [zeros_like(v) for v in tree]
    if isinstance(tree, torch.Tensor):
        return torch.zeros_like(tree)
    return None


# -- 4 ranks save an FSDP2 model, 2 ranks load it -------------------------------------------


def run_fsdp_jobs(out: Path) -> None:
    """dcp.save and dcp.async_save of an FSDP2 model and AdamW by 4 gloo ranks, then
    dcp.load of both by 2 ranks (each checks its local shards); the load's results go to
    ``loaded.json``."""
    assert all(r["saved"] for r in ok(launch(4, "save", str(out), script=JOB, timeout=600)))
    results = ok(launch(2, "load", str(out), script=JOB, timeout=600))
    (out / "loaded.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The directory of the FSDP2 jobs, run once per test run: under pytest-xdist the
    first worker runs them and the others wait and reuse them (xdist's own recipe), so
    the suite starts 6 ranks for this file, not 6 per worker."""
    if worker_id == "master":
        out = tmp_path_factory.mktemp("dcp")
        run_fsdp_jobs(out)
        return out
    out = tmp_path_factory.getbasetemp().parent / "dcp-fsdp"  # shared by this run's workers
    with FileLock(f"{out}.lock"):
        if not (out / "loaded.json").exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            run_fsdp_jobs(out)
    return out


@pytest.fixture(scope="module")
def loaded(saved: Path) -> list[dict[str, Any]]:
    """What each of the 2 loading ranks reported."""
    results: list[dict[str, Any]] = json.loads((saved / "loaded.json").read_text())
    return results


def expected_state(saved: Path) -> Any:
    return torch.load(saved / "expected.pt", weights_only=True)


@pytest.mark.parametrize("name", ["sync", "async"])
def test_four_ranks_save_two_ranks_load_bit_exact(
    saved: Path, loaded: list[dict[str, Any]], name: str
) -> None:
    """dcp.save (and dcp.async_save) by 4 ranks, dcp.load by 2: DCP's planner reshards
    the uneven shards (7 rows: 2+2+2+1 -> 4+3), the reader serves the chunks."""
    for rank in loaded:
        assert rank[f"{name}_local_shards_match"] is True, rank
        assert rank[f"{name}_lr"] == 0.01
    found = torch.load(saved / f"loaded-{name}.pt", weights_only=True)
    assert_same(found, expected_state(saved))
    assert found["extra"] == {"epoch": 3, "tags": ("a", None)}
    assert found["optim"]["param_groups"][0]["betas"] == (0.8, 0.95)


def test_the_directory_is_a_hyperstate_checkpoint(saved: Path) -> None:
    directory = saved / SYNC
    info = checkpoint_at(str(directory))
    assert info is not None and info.number == 2 and info.manifest.run is not None
    assert info.manifest.run.world_size == 4
    assert sorted(info.manifest.files) == [
        *(f"blobs/rank-{r:05d}.safetensors" for r in range(4)),
        DCP_FILE,
        STATE_FILE,
    ]
    assert [i.number for i in CheckpointStore(str(saved / "sync")).list()] == [2]
    tree = ron.loads((directory / STATE_FILE).read_text())
    weight = tree.fields["model"]["0.weight"]  # hyperstate's sharded record, as FSDP2 laid it
    assert [s.fields["at"] for s in weight.fields["shards"]] == [(0, 0), (2, 0), (4, 0), (6, 0)]
    moments = tree.fields["optim"]["state"]["0.weight"]
    assert moments["step"] == ron.Struct("Tensor", {"dtype": "float32", "value": 2.0})
    assert len(moments["exp_avg"].fields["shards"]) == 4
    group = tree.fields["optim"]["param_groups"][0]  # plain values, as text
    assert group["betas"] == (0.8, 0.95) and group["params"][0] == "0.weight"
    assert tree.fields["extra"] == {"epoch": 3, "tags": ("a", None)}

    @dataclass
    class State:
        model: Any
        optim: Any
        extra: Any

    whole = hyperstate.load(State, str(directory / STATE_FILE))  # one process, no group
    expected = expected_state(saved)
    assert_same(whole.model, expected["model"])
    assert_same(whole.optim["state"], expected["optim"]["state"])


def test_verify_passes_and_finds_a_flipped_byte(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hyperstate_main(["verify", str(saved / SYNC)]) == 0
    assert hyperstate_main(["show", str(saved / SYNC), "optim.param_groups"]) == 0
    assert "betas: (0.8, 0.95)" in capsys.readouterr().out
    copy = Path(shutil.copytree(saved / SYNC, tmp_path / "step-000000000002"))
    blob = copy / "blobs" / "rank-00001.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01  # one bit of the last entry's bytes
    blob.write_bytes(bytes(data))
    assert hyperstate_main(["verify", str(copy)]) == 1
    assert "rank-00001.safetensors: corrupted" in capsys.readouterr().out
    # A load that reads the entry names it and loads nothing wrong.
    state = zeros_like(expected_state(saved))
    with one_process(), pytest.raises(CheckpointException) as caught:
        dcp.load(state, storage_reader=StorageReader(copy))
    error = failure(caught.value)
    assert isinstance(error, BlobError) and error.file == "blobs/rank-00001.safetensors"


def test_export_to_dcp_reads_with_plain_filesystem_reader(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported.dcp"
    assert hyperstate_main(["convert", str(saved / SYNC), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".metadata", "__0_0.distcp"]
    expected = expected_state(saved)
    state = zeros_like(expected)
    with one_process():
        dcp.load(state, storage_reader=FileSystemReader(out))  # DCP's own reader
    assert_same(state, expected)
    with pytest.raises(hyperstate.ConvertError, match="found a DCP checkpoint there"):
        export_dcp(saved / SYNC, out)  # never over another checkpoint


# -- one process: any fsspec URL ---------------------------------------------------------------


def small_state() -> dict[str, Any]:
    """The same state at each call: a trained Linear and its AdamW, and plain values."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.5)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optim": optimizer.state_dict(),
        "half": torch.arange(4, dtype=torch.bfloat16),
        "meta": {"epoch": 7, "name": "run", "blob": b"\x00\xff", "when": None},
    }


@pytest.mark.parametrize("where", ["memory", "s3"])
def test_any_fsspec_url(where: str, request: pytest.FixtureRequest) -> None:
    # The moto S3 server starts only for the s3 case.
    root = "memory://dcp-storage" if where == "memory" else request.getfixturevalue("s3_bucket")
    url = f"{root}/run/step-000000000009"
    state = small_state()
    try:
        with one_process():
            dcp.save(state, storage_writer=StorageWriter(url))
            target = zeros_like(state)
            target["meta"] = {"epoch": 0, "name": "", "blob": b"", "when": 1}
            dcp.load(target, storage_reader=StorageReader(url))
        assert_same(target, state)
        info = CheckpointStore(f"{root}/run").latest()
        assert info is not None and info.number == 9
        assert CheckpointStore(f"{root}/run").verify(info) == []
    finally:
        if where == "memory":
            fsspec.filesystem("memory").rm("/dcp-storage", recursive=True)


# -- nothing in a directory is unpickled ----------------------------------------------------------


class Payload:
    """Unpickled, creates the file ``marker``: a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (builtins.open, (str(self.marker), "w"))


def hostile_pickle(marker: Path) -> bytes:
    data = pickle.dumps(Payload(marker))
    proof = marker.with_name(marker.name + ".proof")
    pickle.loads(pickle.dumps(Payload(proof))).close()  # the payload works when unpickled
    assert proof.exists()
    return data


@pytest.fixture
def committed(tmp_path: Path) -> Path:
    directory = tmp_path / "step-000000000001"
    with one_process():
        dcp.save(small_state(), storage_writer=StorageWriter(directory))
    return directory


def test_planted_pickles_are_never_unpickled(committed: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = hostile_pickle(marker)
    (committed / ".metadata").write_bytes(payload)  # what DCP's own reader unpickles
    (committed / "__0_0.distcp").write_bytes(payload)
    state = small_state()
    target = zeros_like(state)
    with one_process():
        dcp.load(target, storage_reader=StorageReader(committed))
    assert_same(target["model"], state["model"])
    assert not marker.exists()
    # The planted files are no part of the checkpoint: verify says so.
    info = checkpoint_at(str(committed))
    assert info is not None
    problems = CheckpointStore(str(committed)).verify(info)
    assert sorted((p.path, p.kind) for p in problems) == [
        (".metadata", "unexpected"),
        ("__0_0.distcp", "unexpected"),
    ]


def test_a_dcp_directory_is_not_a_committed_checkpoint(tmp_path: Path) -> None:
    """A plain DCP directory (a pickle .metadata) is refused without being opened."""
    marker = tmp_path / "pwned"
    directory = tmp_path / "plain"
    directory.mkdir()
    (directory / ".metadata").write_bytes(hostile_pickle(marker))
    with one_process(), pytest.raises(CheckpointException) as caught:
        dcp.load({"w": torch.zeros(2)}, storage_reader=StorageReader(directory))
    error = failure(caught.value)
    assert isinstance(error, StorageError)
    assert "expected a committed hyperstate checkpoint, found no COMMITTED" in str(error)
    assert not marker.exists()


def test_tampered_values_are_data_or_refused_with_their_place(
    committed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_ron = committed / STATE_FILE
    text = state_ron.read_text()
    target = zeros_like(small_state())
    # A hand edit of a value is a value: loaded as edited (a string is only a string).
    edited = text.replace('"name": "run"', "\"name\": \"__import__('os').system('x')\"")
    state_ron.write_text(edited.replace('"epoch": 7', '"epoch": 8'))
    with one_process(), caplog.at_level(logging.WARNING, logger="hyperstate"):
        dcp.load(target, storage_reader=StorageReader(committed))
    assert target["meta"]["epoch"] == 8
    assert target["meta"]["name"] == "__import__('os').system('x')"
    assert "edited since it was committed" in caplog.text
    # A value that is no plain data (a struct, an enum variant) is refused where it stands.
    for value, found in (('Evil(cmd: "x")', "a Struct: Struct('Evil'"), ("Evil", "Ident('Evil')")):
        state_ron.write_text(text.replace('"epoch": 7', f'"epoch": {value}'))
        with one_process(), pytest.raises(CheckpointException) as caught:
            dcp.load(zeros_like(small_state()), storage_reader=StorageReader(committed))
        error = failure(caught.value)
        assert isinstance(error, StateError)
        assert f"{state_ron}:" in str(error) and "at meta.epoch" in str(error)
        assert "expected plain data (None, bool, int, float, str, bytes" in str(error)
        assert found in str(error)


def test_records_claiming_more_than_the_files_hold_are_refused(committed: Path) -> None:
    state_ron = committed / STATE_FILE
    text = state_ron.read_text()
    state_ron.write_text(text.replace("shape: (2, 3)", "shape: (2000000, 3000000)", 1))
    with one_process(), pytest.raises(CheckpointException) as caught:
        dcp.load({"model": {"weight": torch.zeros(2, 3)}}, storage_reader=StorageReader(committed))
    error = failure(caught.value)
    assert isinstance(error, StorageError) and "rank-00000.safetensors" in str(error)
    assert "expected at least 24000000000" in str(error)


def test_a_damaged_dcp_ron_is_refused_where_it_is_wrong(committed: Path) -> None:
    dcp_ron = committed / DCP_FILE
    text = dcp_ron.read_text()
    for damaged, message in (
        # A key path that is not the entry's: DCP would put the value elsewhere.
        (text.replace('("meta", "epoch")', '("model", "epoch")'), "joins to the name"),
        # A key path to nothing in state.ron.
        (text.replace('"meta.epoch": ("meta", "epoch")', '"meta.x": ("meta", "x")'), "nothing"),
        (text.replace("format: 1", "format: 2"), "expected format 1 to 1, found 2"),
    ):
        dcp_ron.write_text(damaged)
        with one_process(), pytest.raises(CheckpointException) as caught:
            dcp.load(zeros_like(small_state()), storage_reader=StorageReader(committed))
        error = failure(caught.value)
        assert isinstance(error, StateError) and message in str(error), str(error)


# -- what a save refuses ---------------------------------------------------------------------------


def test_values_that_are_not_plain_data_are_refused_at_save(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    directory = tmp_path / "step-000000000003"
    with one_process(), pytest.raises(CheckpointException) as caught:
        state = {"w": torch.ones(2), "bad": Payload(marker)}
        dcp.save(state, storage_writer=StorageWriter(directory))
    error = failure(caught.value)
    assert isinstance(error, StateError) and "value 'bad'" in str(error)
    assert "refused by weights_only" in str(error)
    assert not marker.exists()  # weights_only ran none of it
    assert checkpoint_at(str(directory)) is None  # and nothing was committed
    # A tensor inside a tuple is a value to DCP: not plain data, named by its place.
    with one_process(), pytest.raises(CheckpointException) as caught:
        dcp.save({"pair": (torch.ones(1), 2)}, storage_writer=StorageWriter(directory))
    assert "value 'pair' at [0]: expected plain data" in str(failure(caught.value))


def test_plain_values_round_trip_through_ron() -> None:
    value = {"a": [1, (2.5, None)], 3: b"\x00", (1, "k"): {"nan": float("inf")}, "e": ()}
    assert plain_value(value) == value
    assert ron.loads(ron.dumps(plain_value(value))) == value
    with pytest.raises(StateError, match=r"value 'x' at s\[1\]: expected plain data"):
        plain_value({"s": [1, {2}]}, "x")


def test_a_committed_checkpoint_is_never_overwritten(committed: Path) -> None:
    with one_process(), pytest.raises(CheckpointException) as caught:
        dcp.save(small_state(), storage_writer=StorageWriter(committed))
    error = failure(caught.value)
    assert isinstance(error, StorageError) and "found a committed checkpoint" in str(error)
    info = checkpoint_at(str(committed))
    assert info is not None and CheckpointStore(str(committed)).verify(info) == []


def test_a_failed_saves_files_are_replaced_and_others_refused(tmp_path: Path) -> None:
    directory = tmp_path / "step-000000000004"
    (directory / "blobs").mkdir(parents=True)
    (directory / "blobs" / "rank-00003.safetensors").write_bytes(b"half written")
    (directory / STATE_FILE).write_text("State(")
    with one_process():
        dcp.save({"w": torch.ones(2)}, storage_writer=StorageWriter(directory))
    info = checkpoint_at(str(directory))
    assert info is not None and sorted(info.manifest.files) == [
        "blobs/rank-00000.safetensors",
        DCP_FILE,
        STATE_FILE,
    ]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with one_process(), pytest.raises(CheckpointException) as caught:
        dcp.save({"w": torch.ones(2)}, storage_writer=StorageWriter(other))
    assert "found notes.txt (not part of a hyperstate checkpoint" in str(failure(caught.value))
    assert (other / "notes.txt").read_text() == "keep me"


def test_load_value_never_runs_the_bytes(tmp_path: Path) -> None:
    from hyperstate.distributed.dcp import load_value

    marker = tmp_path / "pwned"
    data = io.BytesIO()
    torch.save(Payload(marker), data)  # how DCP's planner writes a non-tensor value
    data.seek(0)
    with pytest.raises(StateError, match="value 'x': refused by weights_only"):
        load_value(data, "x")
    assert not marker.exists()


def test_the_bytes_a_planner_unpickles_name_only_plain_data() -> None:
    # DCP's default planner unpickles value bytes with weights_only=False: the reader
    # makes them itself, from a plain value, and checks them with the loader that runs
    # no code before handing them over.
    from hyperstate.distributed.dcp import _pickled

    value = {"lr": 0.1, "betas": (0.9, 0.99), "params": [0, 1], "name": b"\x00"}
    assert torch.load(_pickled(value, "x"), weights_only=True) == value
    for not_plain in (ron.Struct("Evil", {}), ron.Ident("Evil"), {"a": [Path("/etc")]}):
        with pytest.raises(StateError, match=r"value 'x'.* expected plain data"):
            _pickled(not_plain, "x")
