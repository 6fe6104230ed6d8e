"""The compact record of a sharded tensor: one ``Grid`` whatever the number of ranks.

The rule is checked against torch's own layout of every coordinate (no process group:
torch's ``_compute_local_shape_and_global_offset`` takes a coordinate), the blob files'
own checksum tables are read back, and grid records written by hand load whole. Real
ranks save and reshard grids in tests/test_distributed.py; hostile grids are in
tests/test_trust.py.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
from torch.distributed.tensor.placement_types import _StridedShard

import hyperstate
from hyperstate import ron
from hyperstate.distributed.dtensor import _cuts
from hyperstate.storage import BLOB_FILES, blob_file
from hyperstate.tensors import BlobReader, BlobWriter
from hyperstate.tensors.codec import Grid
from hyperstate.tensors.safetensors import CHECKSUMS

# (mesh shape, placements): every kind of layout the rule covers.
LAYOUTS = [
    ((4,), (Shard(0),)),
    ((3,), (Shard(1),)),
    ((2, 3), (Shard(0), Shard(1))),
    ((2, 3), (Shard(0), Shard(0))),  # nested: dim 0 cut by 2, each piece by 3
    ((3, 2), (Shard(1), Shard(0))),
    ((2, 2), (Shard(0), Replicate())),  # HSDP-like: copies on mesh dim 1
    ((2, 2), (Replicate(), Shard(1))),
    ((3, 2), (_StridedShard(0, split_factor=2), Shard(0))),  # FSDP2 over TP Shard(0)
    ((2, 4), (_StridedShard(1, split_factor=4), Shard(1))),
    ((2, 2, 2), (Shard(0), Replicate(), Shard(1))),
]
SHAPES = [(0, 4), (1, 4), (5, 4), (7, 3), (8, 8), (13, 6), (16, 9), (30, 2)]


def coordinates(mesh: tuple[int, ...]) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(n) for n in mesh)))


def rank_of(mesh: tuple[int, ...], coordinate: tuple[int, ...]) -> int:
    return sum(c * math.prod(mesh[m + 1 :]) for m, c in enumerate(coordinate))


@pytest.mark.parametrize(("mesh", "placements"), LAYOUTS, ids=lambda v: repr(v))
def test_grid_is_torchs_layout_for_every_rank(mesh: Any, placements: Any) -> None:
    for shape in SHAPES:
        strided = [p for p in placements if isinstance(p, _StridedShard)]
        if strided and shape[strided[0].dim] % strided[0].split_factor:
            continue  # refused (see the next test): not contiguous blocks
        dims, order = _cuts(shape, mesh, placements, ("t",))
        grid = Grid(mesh, dims, order, BLOB_FILES, "t")
        expected = set()
        for coordinate in coordinates(mesh):
            local, offset = _compute_local_shape_and_global_offset(
                shape, mesh, list(coordinate), placements
            )
            at, extent = grid.box(shape, coordinate)
            assert extent == tuple(local), (shape, coordinate)
            if math.prod(local):
                assert at == tuple(offset), (shape, coordinate)
                copies = [
                    c
                    for c, p in zip(coordinate, placements, strict=True)
                    if p.is_shard() is False and not isinstance(p, _StridedShard)
                ]
                if not any(copies):  # the one of a set of copies that writes it
                    expected.add((rank_of(mesh, coordinate), at, extent))
        cells = grid.cells(shape)
        assert set(cells) == expected and len(cells) == len(expected), shape
        assert sum(math.prod(e) for _, _, e in cells) == math.prod(shape)  # they tile it
        # A box gets exactly the cells that overlap it, found without visiting the others.
        for lo in itertools.product(*(range(0, n, 3) for n in shape)):
            hi = tuple(min(n, a + 4) for a, n in zip(lo, shape, strict=True))
            overlap = {
                c
                for c in cells
                if all(a < h and a + n > b for a, n, b, h in zip(c[1], c[2], lo, hi, strict=True))
            }
            assert set(grid.cells(shape, lo, hi)) == overlap, (shape, lo, hi)


def test_strided_shards_that_are_not_blocks_are_refused() -> None:
    """13 rows, TP 2 then FSDP 3: rank (2, 0) holds rows 6 and 11 (torch's own layout),
    which no offset and shape can record."""
    placements = (_StridedShard(0, split_factor=2), Shard(0))
    with pytest.raises(hyperstate.StateError, match=r"dimension 0 \(13\) is not a multiple"):
        _cuts((13, 4), (3, 2), placements, ("w",))
    with pytest.raises(hyperstate.StateError, match="expected a _StridedShard as FSDP2"):
        _cuts((12, 4), (3, 3), placements, ("w",))  # split factor 2, TP mesh dim of 3


def test_a_blob_file_carries_its_entries_checksums(tmp_path: Path) -> None:
    from safetensors import safe_open

    padded = torch.arange(12.0)
    view = padded[:10].view(5, 2)  # as FSDP2 keeps a shard: a view of padded storage
    writer = BlobWriter(tmp_path, blob_file(0), checksums=True)
    exact = writer.add("w", view, exact=True)
    other = writer.add("b", torch.ones(3))
    assert (exact.key, exact.shape, exact.stride) == ("w", (5, 2), None)
    refs = writer.write()
    reader = BlobReader(tmp_path, blob_file(0))
    assert [reader.checksum_of(r.key) for r in refs] == [r.checksum for r in refs]
    assert reader.checksum_of("nothing") == ""
    assert torch.equal(reader.read(refs[0]), view)  # only the shard's 10 floats, not 12
    with safe_open(str(tmp_path / blob_file(0)), "pt") as f:  # still a safetensors file
        assert set(f.keys()) == {"w", "b", CHECKSUMS}
        table = json.loads(bytes(f.get_tensor(CHECKSUMS).tolist()))
    assert table == {"w": refs[0].checksum, "b": refs[1].checksum}
    assert other.key == "b"
    plain = BlobWriter(tmp_path, blob_file(1))  # without: no table, nothing changes
    plain.add("w", view)
    plain.write()
    assert BlobReader(tmp_path, blob_file(1)).checksum_of("w") == ""


@dataclass
class Table:
    t: torch.Tensor


def grid_state(
    directory: Path,
    full: torch.Tensor,
    mesh: tuple[int, ...],
    dims: tuple[int | None, ...],
    *,
    checksums: bool = True,
) -> Path:
    """A state.ron whose tensor ``t`` is a Grid record, and the blob files it names,
    written as each rank of the mesh writes its shard."""
    grid = Grid(mesh, dims, tuple(range(len(mesh))), BLOB_FILES, "t")
    shape = tuple(full.shape)
    for rank, at, extent in grid.cells(shape):
        writer = BlobWriter(directory, blob_file(rank), checksums=checksums)
        box = tuple(slice(a, a + n) for a, n in zip(at, extent, strict=True))
        writer.add("t", full[box], exact=True)
        writer.add("other", torch.zeros(2))  # a file holds more than the shard
        writer.write()
    record = ron.Struct("Tensor", {"dtype": "float32", "shape": shape, "shards": grid.record()})
    state = directory / "state.ron"
    state.write_text(ron.dumps(ron.Struct("Table", {"t": record})) + "\n")
    return state


@pytest.mark.parametrize(
    ("shape", "mesh", "dims"),
    [
        ((10, 3), (4,), (0,)),
        ((5, 7), (2, 3), (0, 1)),
        ((6, 4), (3, 2), (0, None)),
        ((3,), (8,), (0,)),
    ],
)
def test_a_grid_record_loads_whole(
    tmp_path: Path, shape: tuple[int, ...], mesh: tuple[int, ...], dims: Any
) -> None:
    full = torch.arange(float(math.prod(shape))).reshape(shape)
    state = grid_state(tmp_path, full, mesh, dims)
    assert torch.equal(hyperstate.load(Table, state).t, full)


PLAN_SCRIPT = r"""
import json, sys, warnings
import torch, torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard
import hyperstate
from hyperstate.distributed.plan import BlobPlan, assign
from hyperstate.serde import to_value
from hyperstate.storage import BLOB_FILES, blob_file
from dataclasses import dataclass
from typing import Any

dist.init_process_group("fake", store=FakeStore(), rank=3, world_size=8)
row_major = init_device_mesh("cpu", (8,))
reversed_mesh = DeviceMesh("cpu", list(range(7, -1, -1)))

def dt(mesh, rows):
    local = torch.arange(float(rows * 3)).reshape(rows, 3)
    return DTensor.from_local(local, mesh, [Shard(0)], run_check=False,
                              shape=torch.Size((10, 3)), stride=(3, 1))

@dataclass
class State:
    t: dict[str, Any]

# rank 3 of 8: rows 6-7 of 10 (chunks of 2); on the reversed mesh it is at coordinate 4.
state = State(
    t={
        "grid": dt(row_major, 2),
        "reversed": dt(reversed_mesh, 2),
        "a.b": dt(row_major, 2),  # t.a.b, like the next one
        "a": {"b": dt(row_major, 2)},
    }
)
plan = BlobPlan(sys.argv[1], blob_file(3), files=BLOB_FILES)
tree = plan.encode(lambda: to_value(state, State))
plan.keep(assign(plan.items, 3, 8))
records = plan.write()
print(json.dumps({
    "placements": [i.placement for i in plan.items],
    "reported": sorted(records),
    "tree": hyperstate.ron.dumps(tree),
}))
"""


def test_a_plan_records_a_grid_only_where_the_rule_holds(tmp_path: Path) -> None:
    """As rank 3 of 8 (a fake process group): a Shard(0) DTensor on a row-major mesh is
    one Grid, written as an entry of its own and reported to nobody; on a mesh whose
    ranks are numbered otherwise, or under an entry name another tensor's path also
    gives, its shards are listed (and reported)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PLAN_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["placements"] == ["grid", "sharded", "sharded", "sharded"]
    assert result["reported"] == [1, 2, 3]
    tree = ron.loads(result["tree"])
    grid = tree.fields["t"]["grid"].fields["shards"]
    assert grid.name == "Grid" and grid.fields["key"] == "t.grid"
    assert [s.fields["at"] for s in tree.fields["t"]["reversed"].fields["shards"]] == [(8, 0)]
    # The grid shard (rows 6-7) is read back with the checksum from the file's table.
    from hyperstate.tensors.codec import read_parts, sharded_of

    reader = BlobReader(tmp_path, blob_file(3))
    sharded = sharded_of(tree.fields["t"]["grid"], ("t", "grid"))
    parts = read_parts(sharded, ("t",), lambda f: reader, lo=(6, 0), hi=(8, 3))
    assert [(at, p.tolist()) for at, p in parts] == [((6, 0), [[0, 1, 2], [3, 4, 5]])]
    assert reader.checksum_of("t.grid")
