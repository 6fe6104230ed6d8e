"""Damaged or hostile input never crashes, hangs or loads garbage; a reader never breaks a
writer (DESIGN invariants 8-10). Each test reproduces one finding of the trust campaign."""

from __future__ import annotations

import dataclasses
import logging
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
