"""Real multi-process jobs: gloo process groups started through env:// as torchrun does.

Each job (tests/distributed/job.py) trains a DDP model with an Adam optimizer, a DTensor
sharded over all ranks, and a per-rank RNG, checkpointing through HyperState.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_jobs.job import Config
from dist_jobs.launch import Rank, launch

import hyperstate
from hyperstate import PerRank, ron
from hyperstate.edits import request_edit
from hyperstate.storage import CheckpointStore, blob_file
from hyperstate.tensors import BlobReader, codec

ROOT = Path(__file__).resolve().parent.parent
FSDP_JOB = Path(__file__).resolve().parent / "dist_jobs" / "fsdp_job.py"


def ok(ranks: list[Rank]) -> list[dict[str, Any]]:
    for r in ranks:
        assert r.returncode == 0, f"exit {r.returncode}:\n{r.stdout}\n{r.stderr[-4000:]}"
    return [r.result for r in ranks]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted 2-rank run of 8 steps."""
    run = tmp_path_factory.mktemp("reference")
    results = ok(launch(2, str(run), "--steps", "8"))
    assert results[0]["final"] == results[1]["final"]
    return results[0]["final"]


def test_killed_job_resumes_bit_exact(tmp_path: Path, reference: dict[str, Any]) -> None:
    run = str(tmp_path / "run")
    killed = launch(2, run, "--steps", "8", "--kill-rank", "1", "--kill-step", "5")
    assert killed[1].returncode == -9  # SIGKILL
    assert killed[0].returncode != 0  # rank 0 fails (DDP's all-reduce loses its peer)
    assert CheckpointStore(run).latest().number == 4  # type: ignore[union-attr]
    resumed = ok(launch(2, run, "--steps", "8"))
    assert [r["resumed_from"] for r in resumed] == [4, 4]
    for r in resumed:
        assert r["final"] == reference  # bit-identical to the uninterrupted run


def test_world_size_changes(tmp_path: Path, reference: dict[str, Any]) -> None:
    """2 -> 4 -> 2 -> 1 -> 2 ranks: every transition the issue names.

    Through fsspec (not the local fast path), so that each rank's byte-range reads are
    seen: a rank reads only the shards of the table that overlap its own rows.
    """
    run = str(tmp_path / "run")
    url = f"faulty://{run}"  # the local disk through fsspec; no fault is injected
    saved = ok(launch(2, url, "--steps", "2"))[0]["final"]
    previous = saved
    for world, steps in ((4, 4), (2, 6), (1, 8), (2, 8)):
        before = CheckpointStore(run).latest()
        assert before is not None
        results = ok(launch(world, url, "--steps", str(steps), "--per-rank", "reinit"))
        assert len(results) == world
        for r in results:
            assert r["resumed_from"] == previous["step"]
            # Replicated and sharded tensors restore exactly, resharded to the new layout.
            assert r["restored"] == previous
        if world == 4:  # 10 table rows saved as 5 + 5, read back as 3 + 3 + 3 + 1
            table = _table_ranges(Path(before.path))
            for r in results:
                read = {f for f, start, end in r["reads"] if (start, end) in table.get(f, ())}
                expect = {0: {0}, 1: {0, 1}, 2: {1}, 3: {1}}[r["rank"]]
                assert read == {f"rank-{i:05d}.safetensors" for i in expect}, r["rank"]
        previous = results[0]["final"]
        assert all(r["final"] == previous for r in results)
        assert [i.number for i in CheckpointStore(run).list()][-1] == steps
    # DDP's mean over ranks equals the global mean up to float rounding.
    assert previous["step"] == reference["step"] == 8
    assert previous["table"] == reference["table"]
    assert previous["weight"] == pytest.approx(reference["weight"], abs=1e-5)
    assert previous["bias"] == pytest.approx(reference["bias"], abs=1e-5)


def _table_ranges(checkpoint: Path) -> dict[str, set[tuple[int, int]]]:
    """The byte range of the "table" shard in each blob file of a checkpoint."""
    ranges: dict[str, set[tuple[int, int]]] = {}
    for blob in (checkpoint / "blobs").iterdir():
        data = blob.read_bytes()
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + length])
        if "table" in header:
            start, end = header["table"]["data_offsets"]
            ranges[blob.name] = {(8 + length + start, 8 + length + end)}
    return ranges


def test_fsdp2_model_and_optimizer_reshard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fully_shard parameters and Adam moments (DTensors) saved by 2 ranks, resumed by 4;
    then the same checkpoint with its shards listed one by one (the record of earlier
    releases, and of irregular layouts) resumed by 2."""
    run = str(tmp_path / "run")
    saved = ok(launch(2, run, "steps=2", script=FSDP_JOB))[0]["final"]
    results = ok(launch(4, run, "steps=4", script=FSDP_JOB))
    for r in results:
        assert r["resumed_from"] == 2
        assert r["restored"] == saved  # resharded exactly
        assert r["final"] == results[0]["final"] != saved  # and Adam steps on them
    info = CheckpointStore(run).latest()
    assert info is not None and info.number == 4
    state_ron = Path(info.path) / "state.ron"
    state = ron.loads(state_ron.read_text())
    moments = state.fields["optimizer"].fields["state"]["state"][0]["exp_avg"]
    # The (5, 6) weight's moments, sharded by rows over 4 ranks as FSDP2 lays them out:
    # 2 + 2 + 1 + 0 rows, one record; each rank's file holds its rows and their checksum.
    grid = moments.fields["shards"]
    assert (grid.name, grid.fields["mesh"], grid.fields["dims"]) == ("Grid", (4,), (0,))
    key = grid.fields["key"]
    rows = []
    for rank in range(3):
        with BlobReader(info.path, blob_file(rank)) as reader:
            rows.append(reader.read(codec.ref_of(_entry(key, reader), ())).shape[0])
    assert rows == [2, 2, 1]
    assert not (Path(info.path) / blob_file(3)).exists()  # its shards are all empty
    # `hyperstate diff` compares Grid records by their shards' checksums (in the files).
    from hyperstate.tools.cli import main

    previous = CheckpointStore(run).get(3)
    assert previous is not None
    capsys.readouterr()
    assert main(["diff", previous.path, info.path]) == 0
    out = capsys.readouterr().out
    assert "state.optimizer.state[0].exp_avg: Tensor float32[5, 6] 120 B, 3 shards, the" in out
    assert "the bytes of its shards differ" in out
    assert main(["diff", info.path, info.path]) == 0
    assert capsys.readouterr().out.strip() == "no differences"
    # FSDP2 keeps a shard as a view of padded storage (2 rows): only the shard is written.
    weight = state.fields["model"].fields["state"]["0.weight"].fields["shards"]
    with BlobReader(info.path, blob_file(2)) as reader:
        assert reader.read(codec.ref_of(_entry(weight.fields["key"], reader), ())).shape == (1, 6)

    listed = _list_every_grid(state, Path(info.path))
    assert listed == 4 * 3  # 4 parameters, and their 2 moments each
    state_ron.write_text(ron.dumps(state) + "\n")
    again = ok(launch(2, run, "steps=6", script=FSDP_JOB))
    for r in again:
        assert r["resumed_from"] == 4
        assert r["restored"] == results[0]["final"]


def _entry(key: str, reader: BlobReader) -> ron.Struct:
    """A reference record to entry ``key`` of ``reader``'s file, as its header has it,
    with the checksum of the file's own table."""
    from safetensors import safe_open

    with safe_open(f"{reader.directory}/{reader.file}", "pt") as f:
        shape = tuple(f.get_slice(key).get_shape())
    fields = {"file": reader.file, "key": key, "dtype": "float32", "shape": shape}
    return ron.Struct("Tensor", {**fields, "checksum": reader.checksum_of(key)})


def _list_every_grid(tree: Any, checkpoint: Path) -> int:
    """Rewrite each Grid record of ``tree`` as the listed Shard records it stands for;
    return how many there were."""
    if isinstance(tree, ron.Struct):
        shards = tree.fields.get("shards")
        if isinstance(shards, ron.Struct):
            sharded = codec.sharded_of(tree, ())
            assert sharded.grid is not None
            listed = []
            for rank, at, extent in sharded.grid.cells(sharded.shape):
                file = blob_file(rank)
                with BlobReader(checkpoint, file) as reader:
                    checksum = reader.checksum_of(sharded.grid.key)
                fields = {"file": file, "key": sharded.grid.key, "dtype": sharded.dtype}
                fields |= {"shape": extent, "checksum": checksum}
                listed.append(ron.Struct("Shard", {"at": at, **fields}))
            tree.fields["shards"] = listed
            return 1
        return sum(_list_every_grid(v, checkpoint) for v in tree.fields.values())
    if isinstance(tree, dict):
        return sum(_list_every_grid(v, checkpoint) for v in tree.values())
    if isinstance(tree, list | tuple):
        return sum(_list_every_grid(v, checkpoint) for v in tree)
    return 0


def test_two_rank_checkpoint_layout(tmp_path: Path) -> None:
    """Replicated tensors once, spread over the ranks; shards with offsets; per-rank
    values for each rank; and the whole is loadable in one process without a group."""
    run = tmp_path / "run"
    final = ok(launch(2, str(run), "--steps", "2"))[0]["final"]
    info = CheckpointStore(str(run)).latest()
    assert info is not None
    tree = ron.loads((Path(info.path) / "state.ron").read_text())
    refs: list[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, ron.Struct):
            if v.name == "Tensor" and "file" in v.fields:
                refs.append(v)
            for x in v.fields.values():
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x)

    walk(tree.fields["model"])
    walk(tree.fields["optimizer"])
    files = {r.fields["file"] for r in refs}
    assert files == {"blobs/rank-00000.safetensors", "blobs/rank-00001.safetensors"}
    # Every replicated tensor is stored exactly once: the files hold nothing else but the
    # shards of the table and each rank's RNG state.
    from safetensors import safe_open

    stored = 0
    for f in files:
        with safe_open(str(Path(info.path) / f), "pt") as st:
            keys = st.keys()
            stored += len([k for k in keys if not k.startswith(("table", "rng", "__"))])
            # Each rank's file holds its 5 rows of the table, and their checksum.
            assert st.get_slice("table").get_shape() == [5, 3]
            assert "__checksums__" in keys
    assert stored == len(refs)
    # The table's record is one Grid, whatever the number of ranks.
    grid = tree.fields["table"].fields["shards"]
    assert grid == ron.Struct(
        "Grid",
        {"mesh": (2,), "dims": (0,), "files": "blobs/rank-#####.safetensors", "key": "table"},
    )
    assert len(tree.fields["rng"].fields["ranks"]) == 2

    tables = hyperstate.load(Tables, f"{info.path}/state.ron", ignore_extra_fields=True)
    assert tables.table.flatten().tolist() == final["table"]  # the shards, assembled
    # Per-rank values saved by 2 ranks cannot be mapped to this world of 1.
    fresh = Rngs(0, torch.Generator())
    with pytest.raises(hyperstate.StateError, match=r"rng is per-rank state saved by 2 rank"):
        hyperstate.load(
            Rngs, f"{info.path}/state.ron", ignore_extra_fields=True, initial_state=fresh
        )


@dataclass
class Tables:
    step: int
    table: torch.Tensor


@dataclass
class Rngs:
    step: int
    rng: PerRank[torch.Generator]


@pytest.mark.parametrize("mode", ["error", "kill"])
def test_failed_rank_fails_every_rank_and_commits_nothing(tmp_path: Path, mode: str) -> None:
    run = str(tmp_path / "run")
    ranks = launch(2, f"faulty://{run}", "--steps", "6", "--fault", f"1:4:{mode}")
    store = CheckpointStore(run)
    assert [i.number for i in store.list()] == [2]  # checkpoint 4 never committed
    if mode == "error":
        for r in ranks:
            error = r.result["error"]
            assert "DistributedError" in error
            assert "rank 1 failed at step 'write blobs'" in error
            assert "step-000000000004" in error and "injected fault" in error
    else:
        assert ranks[1].returncode == -9, ranks[1].stderr[-3000:]
        error = ranks[0].result["error"]
        assert "lost contact with the other ranks during step 'write blobs'" in error, error
        # The next launch resumes from the last committed checkpoint and finishes.
        resumed = ok(launch(2, run, "--steps", "6"))
        assert [r["resumed_from"] for r in resumed] == [2, 2]
        assert [i.number for i in store.list()] == [2, 4, 6]


def test_hung_rank_times_out(tmp_path: Path) -> None:
    """A rank stuck in its write makes the others give up after collective_timeout."""
    run = str(tmp_path / "run")
    os.environ["HYPERSTATE_TEST_HANG"] = "6"
    try:
        ranks = launch(
            2, f"faulty://{run}", "--steps", "4", "--fault", "1:4:hang", "--timeout", "3"
        )
    finally:
        del os.environ["HYPERSTATE_TEST_HANG"]
    error = ranks[0].result["error"]
    assert "lost contact with the other ranks during step 'write blobs'" in error
    assert "did not arrive within 3 s" in error
    assert "error" in ranks[1].result  # it finds rank 0 gone when it comes back
    assert [i.number for i in CheckpointStore(run).list()] == [2]


def test_async_saves_and_live_edits_on_every_rank(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    ok(launch(2, run, "--steps", "2", "--async"))
    request_edit(run, ["lr=0.01"])
    # The copy to staging in the save thread too: each rank's optimizer steps wait for it.
    results = ok(launch(2, run, "--steps", "6", "--async", "--staging"))
    # Applied at the first step() on both ranks: the second step already uses it.
    for r in results:
        assert r["lr"] == [0.05, 0.01, 0.01, 0.01]
    assert [i.number for i in CheckpointStore(run).list()] == [2, 4, 6]
    assert list((Path(run) / "edits").glob("*.applied"))
    config = hyperstate.load(Config, f"{run}/step-000000000006/config.ron")
    assert config.lr == 0.01
    # What the staged saves committed is the state each rank ended with.
    resumed = ok(launch(2, run, "--steps", "6"))
    for before, after in zip(results, resumed, strict=True):
        assert after["resumed_from"] == 6 and after["restored"] == before["final"]


def test_torchrun_command(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        torchrun,
        "--standalone",
        "--nproc-per-node",
        "2",
        str(ROOT / "examples" / "torchrun" / "train.py"),
        "--checkpoint-dir",
        str(run),
        "steps=4",  # no periodic checkpoint (every 20 steps): the end saves step 4
        "optimizer.lr=1e-3",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-4000:]
    info = CheckpointStore(str(run)).latest()
    assert info is not None and info.number == 4
    assert set(info.manifest.files) >= {"config.ron", "state.ron", "blobs/rank-00000.safetensors"}
    assert "lr: 0.001" in (Path(info.path) / "config.ron").read_text()
