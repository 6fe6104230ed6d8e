"""Jobs as a cluster runs them: several torchrun agents ("nodes") writing to S3, storage
that not every rank sees, ranks that fail and are restarted by torchrun, and managers
opened and closed in a loop.

The jobs are tests/dist_jobs/cluster_job.py (DDP + FSDP2 with AdamW, whose arithmetic
does not depend on the number of ranks, so :func:`reference` in this process is the
uninterrupted run) and tests/dist_jobs/managers_job.py. Each launch is real: torchrun
agents (static rendezvous on 127.0.0.1, or ``--standalone``), gloo process groups, the
moto S3 server of conftest.py, SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fsspec
from dist_jobs.cluster_job import reference
from dist_jobs.launch import Rank, free_port, launch

from hyperstate.storage import (
    COMMITTED,
    CONFIG_FILE,
    STATE_FILE,
    CheckpointStore,
    blob_file,
    probe_file,
)
from hyperstate.tools.cli import main as hyperstate_cli

JOBS = Path(__file__).resolve().parent / "dist_jobs"
CLUSTER_JOB = JOBS / "cluster_job.py"
MANAGERS_JOB = JOBS / "managers_job.py"
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))
TIMEOUT = 300  # seconds for one launch (tens of seconds normally): the suite shares 2 cores
PROBE = probe_file("0").removesuffix("0")  # the name of a probe file, less its token


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}


def _torchrun(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    assert TORCHRUN is not None
    return subprocess.Popen(
        [TORCHRUN, *args],
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(procs: Sequence[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    """Wait for every agent; (exit status, stdout + stderr) of each."""
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT)
            out.append((p.returncode, stdout + stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def _results(directory: Path, attempt: int) -> dict[int, dict[str, Any]]:
    """What each rank of torchrun attempt ``attempt`` reported, by rank."""
    found = {}
    for f in directory.glob(f"attempt-{attempt}-rank-*.json"):
        result = json.loads(f.read_text())
        found[result["rank"]] = result
    return found


def ok(ranks: list[Rank]) -> list[dict[str, Any]]:
    for r in ranks:
        assert r.returncode == 0, f"exit {r.returncode}:\n{r.stdout}\n{r.stderr[-4000:]}"
    return [r.result for r in ranks]


# -- several nodes over S3 ------------------------------------------------------------


def test_two_nodes_save_to_s3_and_one_node_resumes(s3_bucket: str, tmp_path: Path) -> None:
    """Two torchrun agents (2 ranks each) checkpoint to s3://; every rank writes its blob
    file straight to the bucket, rank 0 alone the text files and COMMITTED; then one
    agent with 3 ranks resumes from the bucket and ends bit-exact."""
    url = f"{s3_bucket}/run"
    results = tmp_path / "results"
    results.mkdir()
    job = [str(CLUSTER_JOB), url, "--steps", "4", "--results", str(results), "--record-s3"]
    for _ in range(3):  # the free port may be taken before the agent of node 0 binds it
        port = str(free_port())
        node = ["--nnodes", "2", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
        node += ["--master-port", port]
        agents = _wait(
            [_torchrun(*node, "--node-rank", str(n), *job) for n in (0, 1)]  # two "nodes"
        )
        if not any("ddress already in use" in out for _, out in agents):
            break
    for status, out in agents:
        assert status == 0, out[-4000:]
    ranks = _results(results, 0)
    assert sorted(ranks) == [0, 1, 2, 3]
    assert all(r["world"] == 4 and "final" in r for r in ranks.values())

    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    stored = {p[len(root) + 1 :] for p in fs.find(root)}
    text = {CONFIG_FILE, STATE_FILE, COMMITTED}
    checkpoints = [CheckpointStore(url).dirname(n) for n in (2, 4)]
    blobs = {r: {f"{c}/{blob_file(r)}" for c in checkpoints} for r in range(4)}
    assert stored == {f"{c}/{f}" for c in checkpoints for f in text}.union(*blobs.values())
    # Who wrote what, as each rank's s3fs saw it: its own blob files, straight to the
    # bucket; rank 0 also the text files, COMMITTED and the probe (removed since).
    written = {r: {p[len(root) + 1 :] for p in ranks[r]["written"]} for r in ranks}
    for r in (1, 2, 3):
        assert written[r] == blobs[r]
    probes = {p for p in written[0] if p.startswith(PROBE)}
    assert len(probes) == 1  # one check when the manager opened, none per save
    assert written[0] - probes == blobs[0] | {f"{c}/{f}" for c in checkpoints for f in text}

    one_node = tmp_path / "one-node"
    one_node.mkdir()
    job = [str(CLUSTER_JOB), url, "--steps", "6", "--results", str(one_node)]
    [(status, out)] = _wait([_torchrun("--standalone", "--nproc-per-node", "3", *job)])
    assert status == 0, out[-4000:]
    finals = _results(one_node, 0)
    assert sorted(finals) == [0, 1, 2]
    for r in finals.values():
        assert r["resumed_from"] == 4
        assert r["restored"] == ranks[0]["final"]
        assert r["final"] == reference(6)
    info = CheckpointStore(url).latest()
    assert info is not None and info.number == 6
    assert {f for f in info.manifest.files if f.startswith("blobs/")} == {
        blob_file(r) for r in range(3)
    }


# -- storage that not every rank sees -------------------------------------------------


def test_unshared_checkpoint_directory_fails_before_any_write(tmp_path: Path) -> None:
    """Each rank given its own directory (as node-local disks at one path would be):
    every rank fails when the manager opens, naming the rank that could not see rank 0's
    probe; nothing is left in either directory but what was there (a leftover probe of
    an earlier job, which fools nobody)."""
    stale = probe_file("00000000000000ff")
    for r in (0, 1):
        (tmp_path / f"node-{r}").mkdir()
        (tmp_path / f"node-{r}" / stale).write_text("00000000000000ff")
    ranks = launch(2, str(tmp_path / "node-{rank}"), "--steps", "2", script=CLUSTER_JOB)
    for r in ranks:
        assert r.returncode == 3, r.stderr[-3000:]
        error = r.result["error"]
        assert error.startswith("StorageError: check shared storage"), error
        assert "must be shared storage visible to every rank" in error
        assert f"rank(s) 1 could not see the file {PROBE}" in error
        assert f"rank 1 on {socket.gethostname()}: not found" in error
        assert f"rank 0 on {socket.gethostname()}:" not in error  # it saw its own probe
    for r in (0, 1):
        assert [p.name for p in (tmp_path / f"node-{r}").iterdir()] == [stale]


def test_leftover_probe_is_not_a_checkpoint(tmp_path: Path, capsys: Any) -> None:
    """A probe left behind (rank 0 killed between writing and removing it) changes
    nothing for discovery, ``hyperstate ls`` or the next save."""
    store = CheckpointStore(str(tmp_path))
    pending = store.begin(3)
    pending.write_file(STATE_FILE, b"State(step: 3)\n")
    pending.commit()
    (tmp_path / probe_file("0123456789abcdef")).write_text("0123456789abcdef")
    assert [i.number for i in store.list()] == [3]
    assert store.uncommitted() == [] and store.cleanup_uncommitted() == []
    assert hyperstate_cli(["ls", str(tmp_path)]) == 0
    assert "3" in capsys.readouterr().out
    assert (tmp_path / probe_file("0123456789abcdef")).exists()


# -- elastic restarts ---------------------------------------------------------------


def test_restarted_ranks_resume_bit_exact(tmp_path: Path) -> None:
    """``torchrun --max-restarts 2``, 2 ranks, checkpoints every 2 steps up to 10:

    - attempt 0: rank 1 raises before step 5; torchrun stops rank 0 and restarts both;
    - attempt 1: resumes from 4; rank 1 is SIGKILLed as it writes its blob file of
      checkpoint 8; rank 0 fails within the collective timeout (20 s, set with
      ``HYPERSTATE_DIST_TIMEOUT``) and checkpoint 8 is not committed;
    - attempt 2: resumes from 6 and ends with the weights of an uninterrupted run.
    """
    run = tmp_path / "run"
    results = tmp_path / "results"
    results.mkdir()
    agent = _torchrun(
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "2",
        str(CLUSTER_JOB),
        f"faulty://{run}",  # job.py's local filesystem that can kill a rank mid-write
        "--steps",
        "10",
        "--results",
        str(results),
        "--fail-at",
        f"5:1:{tmp_path / 'failed'}",
        "--kill-in-save",
        f"8:1:{tmp_path / 'killed'}",
        # torchrun's rendezvous store outlives a restart by default, and the restarted
        # ranks' gloo rendezvous may read the addresses of the ranks before them from it
        # (pytorch/pytorch#135712, #167288): a fresh store for each attempt.
        env=_env(HYPERSTATE_DIST_TIMEOUT="20", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1"),
    )
    [(status, out)] = _wait([agent])
    assert status == 0, out[-6000:]

    first = _results(results, 0)
    assert first[1]["error"] == "RuntimeError: injected failure of rank 1 at step 5"
    assert "final" not in first.get(0, {})  # it lost rank 1 (or torchrun stopped it)

    second = _results(results, 1)
    assert 1 not in second  # SIGKILLed while writing its blob file of checkpoint 8
    assert second[0]["committed_at_start"] == [2, 4]
    assert second[0]["resumed_from"] == 4
    error = second[0]["error"]
    assert "checkpoint" in error and "step-000000000008" in error, error
    assert "lost contact with the other ranks during step 'write blobs'" in error, error
    assert "did not arrive within 20 s" in error, error

    third = _results(results, 2)
    assert third[0]["committed_at_start"] == [2, 4, 6]  # nothing committed at 8
    for r in third.values():
        assert r["resumed_from"] == 6
        assert r["final"] == reference(10)
    assert [i.number for i in CheckpointStore(str(run)).list()] == [2, 4, 6, 8, 10]
    assert CheckpointStore(str(run)).uncommitted() == []


# -- hyperstate's own process groups --------------------------------------------------


def test_managers_in_a_loop_reuse_their_process_groups(tmp_path: Path) -> None:
    """A script that opens and closes managers 20 times has the same number of process
    groups after each (the default one and one pair); two managers open at once hold two
    pairs, and both are reused afterwards; the job exits cleanly."""
    ranks = launch(2, str(tmp_path / "run"), script=MANAGERS_JOB)
    for result in ok(ranks):
        assert result["start"] == 1  # the default group
        assert result["loop"] == [3] * 20
        assert result["saved"] == list(range(1, 21))
        assert result["both"] == 5
        assert result["after"] == [5] * 5
        assert "this manager is closed" in result["after_close"]
    for r in ranks:
        assert "terminate called" not in r.stderr
