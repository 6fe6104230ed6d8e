"""Damaged or hostile input never crashes, hangs or loads garbage; a reader never breaks a
writer (DESIGN invariants 8-10). Each test reproduces one finding of the trust campaign."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import hyperstate
from hyperstate.edits import request_edit
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
