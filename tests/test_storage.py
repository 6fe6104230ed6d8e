"""The checkpoint store: one suite run against local disk, ``memory://`` and S3, plus faults.

Every backend must give the same answers: a checkpoint exists exactly when its
``COMMITTED`` does, uncommitted directories are invisible and cleaned up, ``verify`` tells
hand edits from corruption, retention never deletes the newest or an uncommitted one.
A fault-injecting filesystem fails chosen writes; a child process is SIGKILLed mid-save.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

import hyperstate
from hyperstate import _fs
from hyperstate.errors import HyperstateError
from hyperstate.storage import (
    COMMITTED,
    CheckpointStore,
    FileEntry,
    Manifest,
    RetentionPolicy,
    RetryPolicy,
    StorageError,
)
from hyperstate.tensors.safetensors import checksum

FAST = RetryPolicy(attempts=4, initial_delay=0.001, max_delay=0.005)


def payload(number: int, size: int = 4096) -> bytes:
    return random.Random(number).randbytes(size)


def save(store: CheckpointStore, number: int, size: int = 4096) -> None:
    pending = store.begin(number)
    pending.write_file("config.ron", b"Config(\n    lr: 0.1,\n)\n")
    pending.write_file("state.ron", f"State(\n    step: {number},\n)\n".encode())
    pending.write_file("blobs/rank-00000.safetensors", payload(number, size))
    pending.commit()


def read(url: str) -> bytes:
    return _fs.read_bytes(url)


def write(url: str, data: bytes) -> None:
    fs, path = _fs.url_to_fs(url)
    fs.makedirs(fs._parent(path), exist_ok=True)
    fs.pipe_file(path, data)


@pytest.fixture(params=["local", "memory", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "local":
        yield str(tmp_path / "ckpt")
        return
    if request.param == "s3":
        # A fresh bucket on the moto server of conftest.py; deleted afterwards.
        bucket: str = request.getfixturevalue("s3_bucket")
        yield f"{bucket}/runs/ckpt"
        return
    url = f"memory://hyperstate-test-{uuid.uuid4().hex}"
    yield url
    fs, path = _fs.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@pytest.fixture
def store(root: str) -> CheckpointStore:
    return CheckpointStore(root, retry=FAST)


# -- the backend suite ------------------------------------------------------------------


def test_empty_root(store: CheckpointStore) -> None:
    assert store.list() == []
    assert store.latest() is None
    assert store.uncommitted() == []
    assert store.cleanup_uncommitted() == []


def test_begin_write_commit_list_latest(store: CheckpointStore, root: str) -> None:
    for number in (2000, 1000, 12000):
        save(store, number)
    infos = store.list()
    assert [i.number for i in infos] == [1000, 2000, 12000]
    latest = store.latest()
    assert latest is not None and latest.number == 12000
    assert latest.path == f"{root}/step-000000012000"
    assert read(f"{latest.path}/blobs/rank-00000.safetensors") == payload(12000)
    files = latest.manifest.files
    assert sorted(files) == ["blobs/rank-00000.safetensors", "config.ron", "state.ron"]
    assert files["state.ron"] == FileEntry(
        len(read(f"{latest.path}/state.ron")), checksum(read(f"{latest.path}/state.ron"))
    )
    assert latest.manifest.format == 1 and latest.manifest.number == 12000
    assert latest.manifest.created.endswith("+00:00")
    # COMMITTED is RON that reads back to the same manifest.
    text = read(f"{latest.path}/{COMMITTED}").decode()
    assert text.startswith("Committed(")
    assert Manifest.loads(text) == latest.manifest
    assert store.get(1000) is not None and store.get(1500) is None
    assert all(store.verify(i) == [] for i in infos)


def test_prefix_and_padding(root: str) -> None:
    store = CheckpointStore(root, prefix="epoch", retry=FAST)
    save(store, 7)
    assert store.path(7) == f"{root}/epoch-000000000007"
    assert [i.number for i in store.list()] == [7]
    # Another prefix in the same root is another series.
    assert CheckpointStore(root).list() == []
    with pytest.raises(ValueError):
        CheckpointStore(root, prefix="a/b")
    with pytest.raises(ValueError):
        store.path(-1)


def test_uncommitted_is_invisible_and_cleaned(store: CheckpointStore) -> None:
    save(store, 1)
    pending = store.begin(2)
    pending.write_file("state.ron", b"State()")
    assert [i.number for i in store.list()] == [1]
    latest = store.latest()
    assert latest is not None and latest.number == 1
    assert store.uncommitted() == [store.path(2)]
    # An in-flight save newer than the given number is left alone.
    assert store.cleanup_uncommitted(keep_newer_than=1) == []
    assert store.cleanup_uncommitted() == [store.path(2)]
    assert store.uncommitted() == []
    assert [i.number for i in store.list()] == [1]
    assert store.verify(1) == []


def test_begin_clears_leftover_and_refuses_committed(store: CheckpointStore) -> None:
    pending = store.begin(5)
    pending.write_file("blobs/stale.safetensors", b"stale")
    # A crash left it there; a new save of the same number starts clean.
    pending = store.begin(5)
    pending.write_file("state.ron", b"State()")
    info = pending.commit()
    assert sorted(info.manifest.files) == ["state.ron"]
    with pytest.raises(StorageError, match="already committed"):
        store.begin(5)
    with pytest.raises(StorageError, match="committed"):
        pending.write_file("late.ron", b"")
    with pytest.raises(StorageError, match="committed"):
        pending.abort()


def test_abort(store: CheckpointStore) -> None:
    save(store, 1)
    pending = store.begin(2)
    pending.write_file("blobs/rank-00000.safetensors", b"x" * 100)
    pending.abort()
    assert store.uncommitted() == []
    assert [i.number for i in store.list()] == [1]
    with pytest.raises(StorageError, match="aborted"):
        pending.write_file("state.ron", b"")


def test_several_writers_then_one_commit(store: CheckpointStore, root: str) -> None:
    rank0 = store.begin(3)
    rank0.write_file("state.ron", b"State()")
    # Rank 1 has its own store object, writes its blob file and reports the entry.
    rank1 = CheckpointStore(root, retry=FAST).join(3)
    reported = rank1.write_file("blobs/rank-00001.safetensors", payload(31))
    assert rank1.entries == {"blobs/rank-00001.safetensors": reported}
    rank0.record("blobs/rank-00001.safetensors", size=reported.size, checksum=reported.checksum)
    # A blob writer wrote this one straight through fsspec; record() reads it.
    write(f"{rank0.path}/blobs/rank-00000.safetensors", payload(30, 100_000))
    entry = rank0.record("blobs/rank-00000.safetensors")
    assert entry == FileEntry(100_000, checksum(payload(30, 100_000)))
    info = rank0.commit()
    assert sorted(info.manifest.files) == [
        "blobs/rank-00000.safetensors",
        "blobs/rank-00001.safetensors",
        "state.ron",
    ]
    assert store.verify(info) == []


def test_commit_refuses_missing_wrong_size_and_unrecorded(store: CheckpointStore) -> None:
    pending = store.begin(1)
    pending.record("blobs/rank-00001.safetensors", size=10, checksum=checksum(b"0" * 10))
    with pytest.raises(StorageError, match="missing") as exc:
        pending.commit()
    assert exc.value.operation == "commit"
    assert exc.value.path.endswith("blobs/rank-00001.safetensors")
    write(f"{pending.path}/blobs/rank-00001.safetensors", b"0" * 9)
    with pytest.raises(StorageError, match="recorded size 10, found 9"):
        pending.commit()
    write(f"{pending.path}/blobs/rank-00001.safetensors", b"0" * 10)
    write(f"{pending.path}/stray.bin", b"?")
    with pytest.raises(StorageError, match=r"not recorded: stray\.bin"):
        pending.commit()
    assert store.list() == []
    pending.record("stray.bin")
    assert pending.commit().number == 1


@pytest.mark.parametrize(
    "relpath",
    ["../escape.ron", "/etc/passwd", "a/../../b", "a//b", "./a", "", "C:/x", "a\\..\\b", COMMITTED],
)
def test_paths_escaping_the_checkpoint_are_rejected(store: CheckpointStore, relpath: str) -> None:
    pending = store.begin(1)
    with pytest.raises(StorageError):
        pending.write_file(relpath, b"x")
    with pytest.raises(StorageError):
        pending.record(relpath, size=1, checksum=checksum(b"x"))


def test_manifest_with_escaping_path_is_not_a_checkpoint(store: CheckpointStore) -> None:
    save(store, 1)
    pending = store.begin(2)
    pending.write_file("state.ron", b"State()")
    pending.commit()
    bad = Manifest(2, {"../../evil": FileEntry(1, checksum(b"x"))}, created="now")
    write(f"{store.path(2)}/{COMMITTED}", bad.dumps().encode())
    with pytest.raises(StorageError, match="inside the checkpoint"):
        Manifest.loads(bad.dumps())
    assert [i.number for i in store.list()] == [1]
    latest = store.latest()
    assert latest is not None and latest.number == 1
    # Not cleaned up as uncommitted either: a person may want to repair it.
    assert store.uncommitted() == []


def test_verify_tells_edits_from_corruption(store: CheckpointStore) -> None:
    save(store, 1)
    info = store.latest()
    assert info is not None
    blob = f"{info.path}/blobs/rank-00000.safetensors"
    data = bytearray(read(blob))
    data[1234] ^= 0x01
    write(blob, bytes(data))
    write(f"{info.path}/state.ron", b"State(\n    step: 1,\n    lr: 0.5,\n)\n")
    problems = {p.path: p for p in store.verify(info)}
    assert set(problems) == {"blobs/rank-00000.safetensors", "state.ron"}
    corrupted = problems["blobs/rank-00000.safetensors"]
    assert corrupted.kind == "corrupted" and corrupted.fatal
    assert "corrupted" in str(corrupted) and blob in str(corrupted)
    edited = problems["state.ron"]
    assert edited.kind == "edited" and not edited.fatal
    assert "edited since commit" in str(edited)


def test_verify_reports_missing_and_unexpected(store: CheckpointStore) -> None:
    save(store, 1)
    info = store.latest()
    assert info is not None
    fs, path = _fs.url_to_fs(f"{info.path}/config.ron")
    fs.rm(path)
    write(f"{info.path}/extra.txt", b"hi")
    kinds = {p.path: p.kind for p in store.verify(1)}
    assert kinds == {"config.ron": "missing", "extra.txt": "unexpected"}
    with pytest.raises(StorageError, match="not committed"):
        store.verify(99)


def test_verify_progress_adds_up_to_the_manifest(store: CheckpointStore) -> None:
    save(store, 1)
    info = store.latest()
    assert info is not None
    fs, path = _fs.url_to_fs(f"{info.path}/config.ron")
    fs.rm(path)  # a missing file still finishes its progress
    calls: list[tuple[str, int, int]] = []
    store.verify(info, progress=lambda name, done, size: calls.append((name, done, size)))
    files = info.manifest.files
    assert [c[0] for c in calls if c[1] == c[2]] == sorted(files)  # each ends once, in order
    for name, entry in files.items():
        done = [d for n, d, size in calls if n == name]
        assert done == sorted(done) and done[-1] == entry.size
        assert {size for n, _, size in calls if n == name} == {entry.size}


def test_retention_keep_last_and_every(store: CheckpointStore) -> None:
    for number in range(10, 101, 10):
        save(store, number, size=64)
    in_flight = store.begin(110)
    in_flight.write_file("state.ron", b"State()")
    deleted = store.retain(RetentionPolicy(keep_last=2, keep_every=30))
    assert deleted == [10, 20, 40, 50, 70, 80]
    assert [i.number for i in store.list()] == [30, 60, 90, 100]
    assert store.uncommitted() == [store.path(110)]
    assert all(store.verify(i) == [] for i in store.list())
    # Deleted checkpoints leave no directory behind.
    assert all(store.path(n) not in store.uncommitted() for n in deleted)


def test_retention_keep_best_never_deletes_newest(store: CheckpointStore) -> None:
    for number in (1, 2, 3, 4, 5):
        save(store, number, size=64)
    store.begin(6).write_file("state.ron", b"State()")
    losses = {1: 0.5, 2: 0.1, 3: 0.2, 4: 0.9, 5: 0.8}
    assert store.retain(RetentionPolicy(keep_best=2), losses) == [1, 4]
    assert [i.number for i in store.list()] == [2, 3, 5]
    assert store.uncommitted() == [store.path(6)]
    # Best by max through a function of the checkpoint; the newest still stays.
    deleted = store.retain(RetentionPolicy(keep_best=1, mode="max"), lambda i: -i.number)
    assert deleted == [3]
    assert [i.number for i in store.list()] == [2, 5]
    assert store.retain(RetentionPolicy(keep_last=1)) == [2]
    assert store.retain(RetentionPolicy(keep_last=1)) == []
    assert [i.number for i in store.list()] == [5]


def test_retention_policy_rules() -> None:
    assert RetentionPolicy().keep([3, 1, 2]) == [1, 2, 3]
    assert RetentionPolicy(keep_last=1).keep([]) == []
    assert RetentionPolicy(keep_every=5).keep([1, 5, 7, 10, 11]) == [5, 10, 11]
    nan = float("nan")
    assert RetentionPolicy(keep_best=1).keep([1, 2, 3], {1: nan, 2: 5.0}) == [2, 3]
    # Checkpoints without a metric are no candidates for best.
    assert RetentionPolicy(keep_best=2).keep([1, 2, 3, 4], {2: 1.0}) == [2, 4]
    with pytest.raises(ValueError, match="metric"):
        RetentionPolicy(keep_best=1).keep([1, 2])
    with pytest.raises(ValueError):
        RetentionPolicy(keep_last=0)
    with pytest.raises(ValueError):
        RetentionPolicy(mode="median")  # type: ignore[arg-type]


def test_manifest_rejects_malformed() -> None:
    for text in ["", "Other()", "Committed(format: 1)", "Committed(format: 99, number: 1)"]:
        with pytest.raises(StorageError) as exc:
            Manifest.loads(text, "x/COMMITTED")
        assert exc.value.operation == "read manifest" and exc.value.path == "x/COMMITTED"
    good = Manifest(1, {"a.ron": FileEntry(1, "xxh3-64:00")}, created="t")
    assert Manifest.loads(good.dumps()) == good
    with pytest.raises(StorageError, match=r"a\.ron: expected File"):
        Manifest.loads(good.dumps().replace("size: 1", "size: -1"))


def test_storage_error_is_a_hyperstate_error() -> None:
    err = StorageError("write", "memory://x/y", "boom")
    assert isinstance(err, HyperstateError)
    assert str(err) == "write memory://x/y: boom"


def test_storage_is_not_exported_with_torch() -> None:
    code = "import hyperstate.storage, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert hyperstate.HyperstateError is HyperstateError


# -- injected faults --------------------------------------------------------------------


class FaultyFileSystem(MemoryFileSystem):
    """The memory filesystem, failing writes (``pipe_file``) to chosen paths.

    ``faults`` maps a path suffix to how many more writes to it fail (-1: all of them);
    ``writes`` counts the attempts per path.
    """

    protocol = ("faultymem",)
    faults: ClassVar[dict[str, int]] = {}
    writes: ClassVar[dict[str, int]] = {}

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, str):
            path = path.removeprefix("faultymem://")
        return super()._strip_protocol(path)

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        self.writes[path] = self.writes.get(path, 0) + 1
        for suffix, left in self.faults.items():
            if path.endswith(suffix) and left != 0:
                self.faults[suffix] = left - 1 if left > 0 else left
                raise OSError(errno.EIO, "injected I/O error", path)
        super().pipe_file(path, value, *args, **kwargs)


@pytest.fixture
def faulty_root() -> Iterator[str]:
    fsspec.register_implementation("faultymem", FaultyFileSystem, clobber=True)
    FaultyFileSystem.faults.clear()
    FaultyFileSystem.writes.clear()
    url = f"faultymem://faults-{uuid.uuid4().hex}"
    yield url
    FaultyFileSystem.faults.clear()
    fs, path = _fs.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_transient_failures_are_retried(faulty_root: str) -> None:
    store = CheckpointStore(faulty_root, retry=FAST)
    FaultyFileSystem.faults["step-000000000001/blobs/rank-00000.safetensors"] = 3
    FaultyFileSystem.faults[f"step-000000000001/{COMMITTED}"] = 2
    save(store, 1)
    writes = FaultyFileSystem.writes
    blob = next(p for p in writes if p.endswith("blobs/rank-00000.safetensors"))
    marker = next(p for p in writes if p.endswith(COMMITTED))
    assert (writes[blob], writes[marker]) == (4, 3)
    assert [i.number for i in store.list()] == [1]
    assert store.verify(1) == []


@pytest.mark.parametrize(
    "failing", ["blobs/rank-00000.safetensors", COMMITTED], ids=["blob", "marker"]
)
def test_permanent_failure_raises_and_keeps_previous(faulty_root: str, failing: str) -> None:
    store = CheckpointStore(faulty_root, retry=FAST)
    save(store, 1)
    FaultyFileSystem.faults[f"step-000000000002/{failing}"] = -1
    with pytest.raises(StorageError) as exc:
        save(store, 2)
    assert exc.value.operation == ("commit" if failing == COMMITTED else "write")
    assert exc.value.path == f"{store.path(2)}/{failing}"
    assert "injected I/O error" in str(exc.value)
    assert [i.number for i in store.list()] == [1]
    latest = store.latest()
    assert latest is not None and latest.number == 1
    assert store.verify(latest) == []
    assert read(f"{latest.path}/blobs/rank-00000.safetensors") == payload(1)
    assert store.cleanup_uncommitted() == [store.path(2)]


def test_too_many_transient_failures_give_up(faulty_root: str) -> None:
    store = CheckpointStore(faulty_root, retry=RetryPolicy(attempts=2, initial_delay=0.001))
    FaultyFileSystem.faults["step-000000000001/state.ron"] = 2
    with pytest.raises(StorageError, match=r"write .*state\.ron: .*injected"):
        save(store, 1)
    assert store.list() == []


# -- a real crash -----------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import random, sys
    from hyperstate.storage import CheckpointStore, RetentionPolicy

    store = CheckpointStore(sys.argv[1])
    latest = store.latest()
    number = latest.number + 1
    store.cleanup_uncommitted(keep_newer_than=None)
    print("ready", flush=True)
    while True:
        pending = store.begin(number)
        pending.write_file("state.ron", f"State(step: {number})".encode())
        pending.write_file(
            "blobs/rank-00000.safetensors", random.Random(number).randbytes(200_000)
        )
        pending.commit()
        store.retain(RetentionPolicy(keep_last=2))
        number += 1
    """
)


def test_sigkill_mid_save_leaves_newest_committed_checkpoint(tmp_path: Path) -> None:
    root = str(tmp_path / "ckpt")
    store = CheckpointStore(root)
    pending = store.begin(0)
    pending.write_file("state.ron", b"State(step: 0)")
    pending.write_file("blobs/rank-00000.safetensors", random.Random(0).randbytes(200_000))
    pending.commit()
    rng = random.Random(1234)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for _ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, root],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.02, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL

        infos = store.list()
        latest = store.latest()
        assert latest is not None and latest == infos[-1]
        blob = read(f"{latest.path}/blobs/rank-00000.safetensors")
        assert blob == random.Random(latest.number).randbytes(200_000)
        assert read(f"{latest.path}/state.ron") == f"State(step: {latest.number})".encode()
        for info in infos:
            assert store.verify(info) == [], info.path
        listed = {i.path for i in infos}
        assert not listed & set(store.uncommitted())
    latest = store.latest()
    assert latest is not None and latest.number > 0
