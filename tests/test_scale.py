"""8 ranks -> 3 -> 8: DDP-replicated and FSDP2-sharded models with AdamW, resumed with
another world size twice, end with the weights of an uninterrupted run, bit for bit.

The job (tests/dist_jobs/cluster_job.py) splits one global batch over the ranks and sums
per-sample gradients exactly (see its docstring), so the arithmetic of a step is the same
for any number of ranks, and the uninterrupted run is :func:`reference`, the same steps
in this process. Any difference is the checkpoint's doing: a tensor restored wrong, a
shard put at the wrong offset, an AdamW moment or step count lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dist_jobs.cluster_job import reference
from dist_jobs.launch import Rank, launch

from hyperstate.storage import CheckpointStore, blob_file

CLUSTER_JOB = Path(__file__).resolve().parent / "dist_jobs" / "cluster_job.py"
# 8 processes share 2 cores in the suite: each launch takes tens of seconds.
TIMEOUT = 600


def ok(ranks: list[Rank]) -> list[dict[str, Any]]:
    for r in ranks:
        assert r.returncode == 0, f"exit {r.returncode}:\n{r.stdout}\n{r.stderr[-4000:]}"
    return [r.result for r in ranks]


def test_8_to_3_to_8_ranks_bit_exact(tmp_path: Path) -> None:
    run = tmp_path / "run"
    previous: dict[str, Any] | None = None
    resumed_from = None
    for world, steps in ((8, 4), (3, 6), (8, 8)):
        results = ok(
            launch(world, str(run), "--steps", str(steps), script=CLUSTER_JOB, timeout=TIMEOUT)
        )
        assert [r["rank"] for r in results] == list(range(world))
        assert [r["resumed_from"] for r in results] == [resumed_from] * world
        if previous is not None:
            for r in results:  # replicated and sharded tensors, resharded exactly
                assert r["restored"] == previous
        final = results[0]["final"]
        assert all(r["final"] == final for r in results)
        # The run so far is the uninterrupted run so far, to the last bit.
        assert final == reference(steps), f"{world} ranks, {steps} steps"
        info = CheckpointStore(str(run)).latest()
        assert info is not None and info.number == steps
        # Every rank wrote its blob file: its shards (ranks 6 and 7 hold no row of the
        # FSDP model with 8 ranks) and its share of the replicated tensors.
        blobs = {f for f in info.manifest.files if f.startswith("blobs/")}
        assert blobs == {blob_file(r) for r in range(world)}
        assert info.manifest.run is not None and info.manifest.run.world_size == world
        previous, resumed_from = final, steps
    assert previous != reference(0)  # the models did train
