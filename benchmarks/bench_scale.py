"""Simulated scale: what a save and a resume cost rank 0 at 8 to 4096 ranks.

Run: .venv/bin/python benchmarks/bench_scale.py [--worlds 8,64,512,4096]
[--layouts fsdp,2d] [--commit-files] [--listed [--listed-max 64]] [--no-dcp]
[--check-dcp] [--check-sample]   (about 5 minutes on 2 cores for the defaults)

A Llama-70B-shaped state (80 layers: q 8192x8192, k/v 1024x8192, o 8192x8192,
gate/up 28672x8192, down 8192x28672, two RMSNorm weights of 8192; embedding and
lm_head 128256x8192; the final norm) with AdamW (exp_avg, exp_avg_sq and a step per
parameter), as ``DTensor``s in two layouts:

* ``fsdp``: every tensor ``Shard(0)`` over a 1-D mesh of all ranks (FSDP2);
* ``2d``: a (ranks/8, 8) mesh, FSDP x TP with TP=8 as torchtitan lays Llama out and
  FSDP2 then shards it: column-parallel weights (q, k, v, gate, up, embedding, lm_head)
  ``(_StridedShard(0, 8), Shard(0))``, row-parallel ones (o, down) ``(Shard(0),
  Shard(1))``, norms ``(Shard(0), Replicate())``.

No tensor has data: the local shards are ``FakeTensor``s on ``cuda:0`` (so records
look as a GPU job writes them) of DTensors on a mesh over a fake process group of the
given size, as rank 0 of that job holds them. What runs is the real code: the plan
(``BlobPlan.encode``, ``signature``, ``assign``, ``keep``), the records of rank 0's own
listed shards, the message every rank sends rank 0 in step ``write blobs`` (the glue of
``CheckpointSave.finish``: its records, a host name, its file's size and checksum),
rank 0's commit (parse every message, ``BlobPlan.fill``, emit ``state.ron``,
``Manifest.dumps`` of ``COMMITTED``), and the resume (parse ``state.ron`` and
``COMMITTED``, check every tensor record with the codec, and find the shards that
overlap rank 0's part of each tensor in the same layout, as ``codec.read_parts`` does).
Other ranks' shards come from torch's ``_compute_local_shape_and_global_offset`` at
their coordinate. Blob files are not written; ``--commit-files`` adds a real
``PendingCheckpoint.commit`` of one 4 KiB file per rank on local disk (the column
"commit files s", wall seconds).

Printed per layout and world size: bytes of ``state.ron`` and ``COMMITTED``; bytes
gathered to rank 0 (the sum of every rank's message; the transport pads each to the
longest, so ``n x max`` is what its all-gather moves to every rank); rank 0's CPU
seconds (``time.process_time``) to plan (in brackets: what ``FakeTensor`` adds to it,
the fake ``to_local()`` of every DTensor, which a real tensor does in microseconds), to
commit (parse the messages, fill, emit) and to parse on resume; the time of
``assign``; the shards rank 0 reads on resume; and the size of DCP's ``.metadata`` (a
pickled ``Metadata``) for the same shards, built from DCP's classes as its planner and
``FileSystemWriter`` fill them (``--check-dcp``: at 8 ranks, also with DCP's own
``DefaultSavePlanner``; ``--check-sample``: how close the pickle in parts, used beyond
a million chunks, comes to one whole pickle at 512 ranks).

``--listed`` records every shard one by one: the record of checkpoints before the
``Grid`` (and of layouts that follow no rule). That form is simulated up to
``--listed-max`` ranks and extrapolated linearly beyond (marked ``~``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import pickle
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
from torch.distributed.tensor.placement_types import _StridedShard

import hyperstate  # noqa: F401  (registers the tensor node kinds)
from hyperstate import ron
from hyperstate.distributed.dtensor import _cuts
from hyperstate.distributed.plan import BlobPlan, assign, key_hint
from hyperstate.serde import to_value
from hyperstate.storage import BLOB_FILES, CheckpointStore, FileEntry, Manifest, RunInfo, blob_file
from hyperstate.tensors import codec
from hyperstate.tensors.codec import Grid
from hyperstate.tensors.safetensors import BlobRef

HIDDEN, INTER, LAYERS, KV, VOCAB, TP = 8192, 28672, 80, 1024, 128256, 8
RANKS_PER_HOST = 8

# name -> (shape, tensor-parallel style)
Param = tuple[str, tuple[int, ...], str]


def llama70b() -> list[Param]:
    """The parameters of Llama-3-70B, as (name, shape, TP style)."""
    params: list[Param] = [("model.embed_tokens.weight", (VOCAB, HIDDEN), "col")]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        params += [
            (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN), "col"),
            (p + "self_attn.k_proj.weight", (KV, HIDDEN), "col"),
            (p + "self_attn.v_proj.weight", (KV, HIDDEN), "col"),
            (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN), "row"),
            (p + "mlp.gate_proj.weight", (INTER, HIDDEN), "col"),
            (p + "mlp.up_proj.weight", (INTER, HIDDEN), "col"),
            (p + "mlp.down_proj.weight", (HIDDEN, INTER), "row"),
            (p + "input_layernorm.weight", (HIDDEN,), "norm"),
            (p + "post_attention_layernorm.weight", (HIDDEN,), "norm"),
        ]
    params += [("model.norm.weight", (HIDDEN,), "norm"), ("lm_head.weight", (VOCAB, HIDDEN), "col")]
    return params


def placements(layout: str, style: str) -> tuple[Any, ...]:
    if layout == "fsdp":
        return (Shard(0),)
    if style == "col":  # TP Shard(0), then FSDP2 shards dim 0 again: right to left
        return (_StridedShard(0, split_factor=TP), Shard(0))
    if style == "row":
        return (Shard(0), Shard(1))
    return (Shard(0), Replicate())


def mesh_shape(layout: str, world: int) -> tuple[int, ...]:
    return (world,) if layout == "fsdp" else (world // TP, TP)


class Model:
    """Stands in for an FSDP2 model: a state dict of DTensor parameters."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def state_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.params = dict(state)


class AdamW:
    """Stands in for ``torch.optim.AdamW`` after a step: its state dict."""

    def __init__(self, state: dict[int, dict[str, Any]]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        group = {
            "lr": 3e-4,
            "betas": (0.9, 0.95),
            "eps": 1e-08,
            "weight_decay": 0.1,
            "amsgrad": False,
            "foreach": None,
            "maximize": False,
            "capturable": False,
            "differentiable": False,
            "fused": None,
            "decoupled_weight_decay": True,
            "params": list(range(len(self.state))),
        }
        return {"state": self.state, "param_groups": [group]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state["state"]


@dataclass
class TrainState:
    step: int
    model: Model
    optimizer: AdamW


@dataclass
class Spec:
    """A planned DTensor: what the other ranks' shards are computed from."""

    shape: tuple[int, ...]
    placements: tuple[Any, ...]


def build_state(layout: str, world: int) -> tuple[TrainState, dict[str, Spec]]:
    """The state as rank 0 of ``world`` ranks holds it, and each tensor's layout by key."""
    from torch.distributed.device_mesh import init_device_mesh

    shape = mesh_shape(layout, world)
    mesh = init_device_mesh("cuda", shape)
    fake = FakeTensorMode()
    specs: dict[str, Spec] = {}

    def dtensor(global_shape: tuple[int, ...], style: str) -> Any:
        places = placements(layout, style)
        local, _ = _compute_local_shape_and_global_offset(
            global_shape, shape, [0] * len(shape), places, skip_offset=True
        )
        with fake:
            t = torch.empty(local, dtype=torch.float32, device="cuda:0")
        stride = tuple(math.prod(global_shape[i + 1 :]) for i in range(len(global_shape)))
        return DTensor.from_local(
            t, mesh, places, run_check=False, shape=torch.Size(global_shape), stride=stride
        )

    params, moments = {}, {}
    for i, (name, global_shape, style) in enumerate(llama70b()):
        params[name] = dtensor(global_shape, style)
        moments[i] = {
            "step": torch.tensor(1000.0),
            "exp_avg": dtensor(global_shape, style),
            "exp_avg_sq": dtensor(global_shape, style),
        }
        places = placements(layout, style)
        specs[key_hint(("model", name))] = Spec(global_shape, places)
        for m in ("exp_avg", "exp_avg_sq"):
            specs[key_hint(("optimizer", "state", i, m))] = Spec(global_shape, places)
    return TrainState(1000, Model(params), AdamW(moments)), specs


def cpu(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the CPU seconds it took (collected garbage first)."""
    gc.collect()
    start = time.process_time()
    result = fn()
    return result, time.process_time() - start


def fake_checksum(*ints: int) -> str:
    return f"xxh3-64:{hash(ints) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


class Boxes:
    """Each rank's shard of each layout, from torch, computed once per (layout, coordinate)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.mesh = shape
        self._cache: dict[tuple[Any, ...], tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def coordinate(self, rank: int) -> list[int]:
        out = []
        for n in reversed(self.mesh):
            out.append(rank % n)
            rank //= n
        return out[::-1]

    def of(self, spec: Spec, coordinate: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(local shape, global offset) of the shard at ``coordinate``: torch's, except for
        ``_StridedShard``, whose offsets torch finds by listing every index of the shard
        (minutes for this model): for those, hyperstate's rule (``Grid.box``), which
        tests/test_compact_shards.py checks against torch's indices."""
        key = (spec.shape, repr(spec.placements), tuple(coordinate))
        box = self._cache.get(key)
        if box is None:
            if any(isinstance(p, _StridedShard) for p in spec.placements):
                dims, order = _cuts(spec.shape, self.mesh, spec.placements, ())
                at, extent = Grid(self.mesh, dims, order, "", "").box(spec.shape, coordinate)
                box = (extent, at)
            else:
                box = _compute_local_shape_and_global_offset(
                    spec.shape, self.mesh, coordinate, spec.placements
                )
            self._cache[key] = box
        return box

    def writes(self, spec: Spec, coordinate: list[int]) -> bool:
        """Whether the rank at ``coordinate`` writes its shard (as ``plan_dtensor`` says)."""
        shape, _ = self.of(spec, coordinate)
        if math.prod(shape) == 0:
            return False
        return all(
            c == 0
            for c, p in zip(coordinate, spec.placements, strict=True)
            if isinstance(p, Replicate)
        )


def shard_record(item: Any, rank: int, shape: tuple[int, ...], at: tuple[int, ...]) -> Any:
    """The record of a listed shard as ``BlobPlan.write`` makes it."""
    ref = BlobRef(
        blob_file(rank),
        key_hint(item.where),
        item.node.fields["dtype"],
        shape,
        device=f"cuda:{rank % RANKS_PER_HOST}",
        checksum=fake_checksum(rank, id(item)),
    )
    return ron.Struct("Shard", {"at": at, **codec.record_fields(ref)})


def messages(plan: BlobPlan, specs: dict[str, Spec], boxes: Boxes, world: int) -> list[bytes]:
    """What each rank sends rank 0 in step ``write blobs`` (rank 0: its own, records kept):
    the records of its listed shards (a Grid's shards are reported by nobody)."""
    listed = [
        (i, item, specs[key_hint(item.where)])
        for i, item in enumerate(plan.items)
        if item.placement == "sharded"
    ]
    out = []
    for rank in range(world):
        coordinate = boxes.coordinate(rank)
        records = {}
        if rank:
            for i, item, spec in listed:
                if boxes.writes(spec, coordinate):
                    shape, at = boxes.of(spec, coordinate)
                    records[i] = shard_record(item, rank, shape, at)
        written = {
            "records": records,
            "per_rank": [],
            "host": f"node-{rank // RANKS_PER_HOST:05d}",
            "size": 10**11 + rank,
            "checksum": fake_checksum(rank),
        }
        out.append(ron.dumps(written).encode())
    return out


def own_records(plan: BlobPlan, owned: list[int], boxes: Boxes, specs: dict[str, Spec]) -> None:
    """Rank 0's records of what it wrote, put in its tree as ``BlobPlan.write`` does."""
    records = {}
    for i in owned:
        item = plan.items[i]
        if item.placement == "sharded":
            shape, at = boxes.of(specs[key_hint(item.where)], boxes.coordinate(0))
            records[i] = shard_record(item, 0, shape, at)
    plan.fill([records])


def commit(plan: BlobPlan, tree: Any, sent: list[bytes], world: int) -> tuple[str, str]:
    """Rank 0's commit: parse every message, fill the tree, emit state.ron and COMMITTED."""
    results = [ron.loads(m.decode(), path="<blob records>") for m in sent]
    plan.fill([r["records"] for r in results])
    plan.set_per_rank([r["per_rank"] for r in results])
    state_text = ron.dumps(tree) + "\n"
    files = {blob_file(r): FileEntry(res["size"], res["checksum"]) for r, res in enumerate(results)}
    files["config.ron"] = FileEntry(2000, fake_checksum(-1))
    files["state.ron"] = FileEntry(len(state_text), fake_checksum(-2))
    run = RunInfo.of_this_process(world_size=world, hosts=[str(r["host"]) for r in results])
    manifest = Manifest(number=1000, files=files, created="2025-01-01T00:00:00Z", run=run)
    return state_text, manifest.dumps()


def records_in(tree: Any, where: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if codec.is_record(tree):
        yield where, tree
    elif isinstance(tree, ron.Struct):
        if list(tree.fields) == ["state"]:  # ``Model(state: {...})``: the path skips it
            yield from records_in(tree.fields["state"], where)
            return
        for k, v in tree.fields.items():
            yield from records_in(v, (*where, k))
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from records_in(v, (*where, k))
    elif isinstance(tree, list | tuple):
        for k, v in enumerate(tree):
            yield from records_in(v, (*where, k))


def resume(state_text: str, committed: str, specs: dict[str, Spec], boxes: Boxes) -> int:
    """Rank 0's parse on resume: both texts, every record checked, the shards it reads
    (those that overlap its part of the same layout, as ``codec.read_parts`` finds them)."""
    tree = ron.loads(state_text, path="state.ron")
    Manifest.loads(committed, "COMMITTED")
    zero = boxes.coordinate(0)
    reads = 0
    for where, record in records_in(tree):
        if "shards" not in record.fields:
            continue
        sharded = codec.sharded_of(record, where)
        shape, at = boxes.of(specs[key_hint(where)], zero)
        lo, hi = at, tuple(a + n for a, n in zip(at, shape, strict=True))
        if sharded.grid is not None:
            reads += len(sharded.grid.cells(sharded.shape, lo, hi))
        else:
            reads += len(overlapping(sharded, lo, hi))
    return reads


def overlapping(sharded: Any, lo: tuple[int, ...], hi: tuple[int, ...]) -> list[Any]:
    return [
        s
        for s in sharded.shards
        if all(a < h and a + n > low for a, n, low, h in zip(s.at, s.shape, lo, hi, strict=True))
    ]


# -- DCP ----------------------------------------------------------------------------------


_GROUP_KEYS = (
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "amsgrad",
    "foreach",
    "maximize",
    "capturable",
    "differentiable",
    "fused",
    "decoupled_weight_decay",
    "params",
)

DcpKey = tuple[str, tuple[Any, ...], Spec | None, bool]  # fqn, path, layout, is a tensor


def dcp_fqns(specs: dict[str, Spec]) -> list[DcpKey]:
    """DCP's flattened keys of the same state (``{"model": ..., "optim": ...}``)."""
    out: list[DcpKey] = []
    for name, _, _ in llama70b():
        out.append((f"model.{name}", ("model", name), specs[key_hint(("model", name))], True))
    for i, (name, _, _) in enumerate(llama70b()):
        spec = specs[key_hint(("optimizer", "state", i, "exp_avg"))]
        for key in ("step", "exp_avg", "exp_avg_sq"):
            path = ("optim", "state", name, key)
            out.append((f"optim.state.{name}.{key}", path, None if key == "step" else spec, True))
    for key in _GROUP_KEYS:
        out.append((f"optim.param_groups.0.{key}", ("optim", "param_groups", 0, key), None, False))
    return out


def own(text: str) -> str:
    """A string object of its own: DCP's plans and write results reach rank 0 pickled by
    each rank, so its ``Metadata`` holds a copy of a name per chunk, and pickle shares
    only one object met twice, not equal ones."""
    return text.encode().decode()


def dcp_metadata(fqns: list[DcpKey], boxes: Boxes, world: int) -> Any:
    """DCP's ``Metadata`` of the save, as ``DefaultSavePlanner.create_global_plan`` and
    ``FileSystemWriter.finish`` make it: one chunk per unique shard, one storage entry per
    chunk (``__<rank>_0.distcp``, offset, length)."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    coordinates = [boxes.coordinate(r) for r in range(world)]
    sd: dict[str, Any] = {}
    storage: dict[Any, Any] = {}
    offsets = [0] * world
    for fqn, _, spec, tensor in fqns:
        if not tensor:  # a param_groups value, pickled by rank 0
            sd[fqn] = BytesStorageMetadata()
            storage[MetadataIndex(own(fqn))] = _StorageInfo("__0_0.distcp", offsets[0], 64)
            offsets[0] += 64
            continue
        if spec is None:  # a 0-d step, written by rank 0
            chunk = ChunkStorageMetadata(torch.Size(()), torch.Size(()))
            sd[fqn] = TensorStorageMetadata(
                TensorProperties(torch.float32), torch.Size(()), [chunk]
            )
            storage[MetadataIndex(own(fqn), torch.Size(()), 0)] = _StorageInfo(
                "__0_0.distcp", offsets[0], 4
            )
            offsets[0] += 4
            continue
        chunks = []
        for rank, coordinate in enumerate(coordinates):
            if not boxes.writes(spec, coordinate):
                continue
            shape, at = boxes.of(spec, coordinate)
            chunks.append(ChunkStorageMetadata(torch.Size(at), torch.Size(shape)))
            length = math.prod(shape) * 4
            storage[MetadataIndex(own(fqn), torch.Size(at), len(chunks) - 1)] = _StorageInfo(
                f"__{rank}_0.distcp", offsets[rank], length
            )
            offsets[rank] += length
        sd[fqn] = TensorStorageMetadata(
            TensorProperties(torch.float32), torch.Size(spec.shape), chunks
        )
    planner_data = {own(fqn): path for fqn, path, _, _ in fqns}
    return Metadata(sd, planner_data=planner_data, storage_data=storage)


def dcp_metadata_bytes(
    specs: dict[str, Spec], boxes: Boxes, world: int, sample: bool | None = None
) -> int:
    """Bytes of DCP's ``.metadata`` (``pickle.dump`` of its ``Metadata``).

    Beyond a million chunks (or with ``sample``) it is pickled in parts, summed less each
    extra pickle's fixed part: the tensors outside the layers, and layers 0, 10, ..., 70,
    each counted for the 10 layers whose names have as many digits (the layers differ in
    nothing else). ``--check-sample`` prints how close that comes to one whole pickle.
    """
    fqns = dcp_fqns(specs)
    chunks = sum(spec is not None for _, _, spec, _ in fqns) * world
    if not (chunks > 1_200_000 if sample is None else sample):
        return len(pickle.dumps(dcp_metadata(fqns, boxes, world)))
    empty = len(pickle.dumps(dcp_metadata([], boxes, world)))
    layers: dict[int, list[DcpKey]] = {}
    rest: list[DcpKey] = []
    for key in fqns:
        name = key[1][1] if key[1][0] == "model" else key[1][2] if key[1][1] == "state" else ""
        parts = str(name).split(".")
        if len(parts) > 2 and parts[1] == "layers":
            layers.setdefault(int(parts[2]), []).append(key)
        else:
            rest.append(key)
    total = len(pickle.dumps(dcp_metadata(rest, boxes, world)))
    for layer in range(0, LAYERS, 10):
        size = len(pickle.dumps(dcp_metadata(layers[layer], boxes, world))) - empty
        total += size * len(range(layer, min(layer + 10, LAYERS)))
    return total


def dcp_planner_bytes(layout: str) -> int:
    """``.metadata`` bytes from DCP's own planner, at 8 ranks (each rank's local plan, the
    global plan, the storage entries a ``FileSystemWriter`` adds)."""
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import MetadataIndex

    world = 8
    local_plans, planners = [], []
    for rank in range(world):
        fake_group(world, rank)
        state, _ = build_state(layout, world)
        sd = {
            "model": state.model.state_dict(),
            "optim": {
                "state": {
                    name: state.optimizer.state[i] for i, (name, _, _) in enumerate(llama70b())
                },
                "param_groups": [
                    {k: v for k, v in state.optimizer.state_dict()["param_groups"][0].items()}
                ],
            },
        }
        planner = DefaultSavePlanner()
        planner.set_up_planner(sd, None, rank == 0)
        local_plans.append(planner.create_local_plan())
        planners.append(planner)
    global_plans, metadata = planners[0].create_global_plan(local_plans)
    storage = {}
    for rank, plan in enumerate(global_plans):
        offset = 0
        for item in plan.items:
            length = 4 * math.prod(item.tensor_data.chunk.sizes) if item.tensor_data else 64
            index = MetadataIndex(item.index.fqn, item.index.offset, item.index.index)
            storage[index] = _StorageInfo(f"__{rank}_0.distcp", offset, length)
            offset += length
    metadata.storage_data = storage
    return len(pickle.dumps(metadata))


# -- running ------------------------------------------------------------------------------


def fake_group(world: int, rank: int = 0) -> None:
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)


@dataclass
class Row:
    layout: str
    world: int
    form: str
    state_bytes: float
    committed_bytes: float
    gathered: float
    gathered_max: float
    plan_s: float
    fake_s: float
    commit_s: float
    resume_s: float
    assign_s: float
    reads: float
    dcp_bytes: int | None = None
    extrapolated: bool = False
    commit_files_s: float | None = None


def simulate(layout: str, world: int, listed: bool, directory: str) -> Row:
    fake_group(world)
    state, specs = build_state(layout, world)
    boxes = Boxes(mesh_shape(layout, world))
    plan = BlobPlan(directory, blob_file(0), files=None if listed else BLOB_FILES)

    def planned() -> tuple[Any, list[int]]:
        tree = plan.encode(lambda: to_value(state, TrainState))
        plan.signature()
        owned = assign(plan.items, 0, world)
        plan.keep(owned)
        return tree, owned

    (tree, owned), plan_s = cpu(planned)
    # What FakeTensor adds: DTensor.to_local() dispatches a fake view_as (about 0.3 ms;
    # a real tensor's takes microseconds), once per DTensor in plan_dtensor.
    dtensors = [t for t in state.model.params.values()]
    dtensors += [m[k] for m in state.optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")]
    _, fake_s = cpu(lambda: [t.to_local() for t in dtensors])
    _, assign_s = cpu(lambda: assign(plan.items, 0, world))
    own_records(plan, owned, boxes, specs)
    sent = messages(plan, specs, boxes, world)
    (state_text, committed), commit_s = cpu(lambda: commit(plan, tree, sent, world))
    for spec in specs.values():  # rank 0's part of each tensor: the restore's target has it
        boxes.of(spec, boxes.coordinate(0))
    reads, resume_s = cpu(lambda: resume(state_text, committed, specs, boxes))
    return Row(
        layout,
        world,
        "listed" if listed else "compact",
        len(state_text.encode()),
        len(committed.encode()),
        sum(map(len, sent)),
        world * max(map(len, sent)),
        plan_s,
        fake_s,
        commit_s,
        resume_s,
        assign_s,
        reads,
    )


def commit_files(world: int, directory: str) -> float:
    """Wall seconds of a real ``PendingCheckpoint.commit`` of ``world`` blob files of 4 KiB,
    written and fsync'd beforehand as the ranks do and recorded as ``save.py`` records
    them: rank 0 lists the directory, checks each file's size, fsyncs the directories and
    writes ``COMMITTED``."""
    import shutil

    from hyperstate import _fs

    root = os.path.join(directory, f"commit-{world}")
    pending = CheckpointStore(root).begin(1)
    os.makedirs(os.path.join(pending.path, "blobs"), exist_ok=True)
    data = os.urandom(4096)
    for rank in range(world):
        with open(os.path.join(pending.path, blob_file(rank)), "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        size, checksum = len(data), _fs.checksum(data)
        pending.record(blob_file(rank), size=size, checksum=checksum, synced=True)
    pending.write_file("state.ron", b"State()\n")
    start = time.perf_counter()
    pending.commit(RunInfo.of_this_process(world_size=world))
    seconds = time.perf_counter() - start
    shutil.rmtree(root)
    return seconds


def extrapolate(rows: list[Row], world: int) -> Row:
    """A listed-form row at ``world`` from the two largest simulated ones: the text, the
    messages and rank 0's commit and resume linear in ranks (a lower bound: parsing
    hundreds of MB grows faster), the plan as it was (it does not depend on ranks)."""
    a, b = rows[-2], rows[-1]

    def at(x: float, y: float) -> float:
        return y + (y - x) * (world - b.world) / (b.world - a.world)

    linear = ("state_bytes", "committed_bytes", "gathered", "gathered_max", "commit_s")
    values = {f: at(getattr(a, f), getattr(b, f)) for f in (*linear, "resume_s")}
    return Row(
        b.layout,
        world,
        "listed",
        values["state_bytes"],
        values["committed_bytes"],
        values["gathered"],
        values["gathered_max"],
        b.plan_s,  # the plan does not depend on the number of ranks
        b.fake_s,
        values["commit_s"],
        values["resume_s"],
        b.assign_s,
        b.reads,
        extrapolated=True,
    )


def size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def table(rows: list[Row]) -> str:
    head = (
        "| layout | ranks | form | state.ron | COMMITTED | gathered to rank 0 (n x max) "
        "| plan s (fake) | commit s | resume s | assign s | shards read | DCP .metadata |"
    )
    files = any(r.commit_files_s is not None for r in rows)
    if files:
        head += " commit files s |"
    lines = [head, "|" + "---|" * (13 if files else 12)]
    for r in rows:
        mark = "~" if r.extrapolated else ""
        dcp = size(r.dcp_bytes) if r.dcp_bytes is not None else ""
        lines.append(
            f"| {r.layout} | {r.world} | {r.form} | {mark}{size(r.state_bytes)} "
            f"| {mark}{size(r.committed_bytes)} | {mark}{size(r.gathered)} "
            f"({mark}{size(r.gathered_max)}) | {mark}{r.plan_s:.2f} ({r.fake_s:.2f}) "
            f"| {mark}{r.commit_s:.3f} "
            f"| {mark}{r.resume_s:.3f} | {mark}{r.assign_s:.4f} | {mark}{r.reads:.0f} | {dcp} |"
            + (f" {r.commit_files_s:.2f} |" if files and r.commit_files_s is not None else "")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", default="8,64,512,4096")
    parser.add_argument("--layouts", default="fsdp,2d")
    parser.add_argument("--listed", action="store_true", help="record shards one by one")
    parser.add_argument("--listed-max", type=int, default=64)
    parser.add_argument("--no-dcp", action="store_true")
    parser.add_argument(
        "--check-dcp",
        action="store_true",
        help="at 8 ranks, also build DCP's .metadata with DCP's own planner (a few minutes)",
    )
    parser.add_argument(
        "--check-sample",
        action="store_true",
        help="compare the sampled DCP .metadata size with one whole pickle, at 512 ranks",
    )
    parser.add_argument(
        "--commit-files", action="store_true", help="time a real commit of one file per rank"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*data pointer of FakeTensor.*")
    worlds = [int(w) for w in args.worlds.split(",")]
    print(
        f"# {platform.node()}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus, python {platform.python_version()}, torch {torch.__version__}, "
        f"{datetime.date.today()}"
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as directory:
        for layout in args.layouts.split(","):
            done: list[Row] = []
            for world in worlds:
                if args.listed and world > args.listed_max and len(done) >= 2:
                    row = extrapolate(done, world)
                else:
                    row = simulate(layout, world, args.listed, directory)
                    done.append(row)
                if not args.no_dcp:
                    fake_group(world)
                    _, specs = build_state(layout, world)
                    row.dcp_bytes = dcp_metadata_bytes(
                        specs, Boxes(mesh_shape(layout, world)), world
                    )
                if args.commit_files and not row.extrapolated:
                    row.commit_files_s = commit_files(world, directory)
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
            if args.check_dcp and 8 in worlds:
                planner = dcp_planner_bytes(layout)
                print(
                    f"# {layout}, 8 ranks: DCP's own planner gives a .metadata of {size(planner)}"
                )
            if args.check_sample:
                fake_group(512)
                _, specs = build_state(layout, 512)
                boxes = Boxes(mesh_shape(layout, 512))
                whole = dcp_metadata_bytes(specs, boxes, 512, sample=False)
                sampled = dcp_metadata_bytes(specs, boxes, 512, sample=True)
                print(f"# {layout}, 512 ranks: DCP .metadata {whole} B whole, {sampled} sampled")
    print()
    print(table(rows))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
