"""hyperstate.tools.convert: files that torch, safetensors and DCP wrote, in and out."""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import hyperstate
from hyperstate import ron
from hyperstate.storage import CheckpointStore, StorageError
from hyperstate.tools.convert import (
    ConvertError,
    detect_format,
    export_safetensors,
    import_checkpoint,
    iter_tensors,
    read_dcp,
    read_torch_save,
    resolve,
    tensor_info,
    write_checkpoint,
)


def dcp_save(state: dict[str, Any], directory: Path) -> None:
    with warnings.catch_warnings():
        # DCP says it assumes one process when there is no process group: here, on purpose.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=directory, no_dist=True)


def test_formats_are_told_from_content(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(1)}, tmp_path / "a.bin")
    save_file({"w": torch.ones(1)}, tmp_path / "b.weights")
    dcp_save({"w": torch.ones(1)}, tmp_path / "dcp")
    write_checkpoint({"w": torch.ones(1)}, tmp_path / "run")
    assert detect_format(str(tmp_path / "a.bin")) == "torch"
    assert detect_format(str(tmp_path / "b.weights")) == "safetensors"
    assert detect_format(str(tmp_path / "dcp")) == "dcp"
    assert detect_format(str(tmp_path / "run")) == "hyperstate"
    assert detect_format(str(tmp_path / "run" / "step-000000000000")) == "hyperstate"
    with pytest.raises(ConvertError, match="no such file or directory"):
        detect_format(str(tmp_path / "missing.pt"))


def test_torch_save_into_a_dict_typed_state(tmp_path: Path) -> None:
    weights = {"fc.weight": torch.randn(3, 2), "fc.bias": torch.zeros(3, dtype=torch.float64)}
    torch.save(weights, tmp_path / "model.pt")
    info = import_checkpoint(str(tmp_path / "model.pt"), tmp_path / "run", number=5)
    assert CheckpointStore(tmp_path / "run").latest() == info
    assert CheckpointStore(tmp_path / "run").verify(5) == []

    @dataclass
    class Imported:
        model: dict[str, torch.Tensor]

    loaded = hyperstate.load(Imported, f"{info.path}/state.ron")
    assert loaded.model.keys() == weights.keys()
    for name, value in weights.items():
        assert torch.equal(loaded.model[name], value)
        assert loaded.model[name].dtype == value.dtype


def test_torch_save_that_needs_unpickling_code_is_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(1), "obj": Path("x")}, tmp_path / "bad.pt")
    with pytest.raises(ConvertError, match=r"weights_only=True\) refused it"):
        read_torch_save(str(tmp_path / "bad.pt"))
    with pytest.raises(ConvertError):
        import_checkpoint(str(tmp_path / "bad.pt"), tmp_path / "run")
    assert not (tmp_path / "run").exists() or not CheckpointStore(tmp_path / "run").list()


@dataclass
class RunConfig:
    hidden: int = 5


@dataclass
class RunState:
    step: int = 0
    model: nn.Module = field(default_factory=lambda: nn.Linear(1, 1))


def make_state(config: RunConfig) -> RunState:
    return RunState(model=nn.Sequential(nn.Linear(4, config.hidden), nn.Linear(config.hidden, 2)))


def test_safetensors_file_resumes_a_hyperstate_run(tmp_path: Path) -> None:
    source = make_state(RunConfig(hidden=6)).model
    save_file(source.state_dict(), tmp_path / "model.safetensors")
    hyperstate.dump(RunConfig(hidden=6), tmp_path / "config.ron")
    import_checkpoint(
        str(tmp_path / "model.safetensors"),
        tmp_path / "run",
        stateful=True,
        config=str(tmp_path / "config.ron"),
    )
    hs = hyperstate.HyperState.load(RunConfig, RunState, make_state, None, tmp_path / "run")
    assert hs.resumed_from is not None and hs.resumed_from.number == 0
    assert hs.config.hidden == 6
    for name, value in source.state_dict().items():
        assert torch.equal(hs.state.model.state_dict()[name], value)


def test_dcp_directory(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}
    dcp_save(state, tmp_path / "dcp")

    read = read_dcp(str(tmp_path / "dcp"))
    assert read["epoch"] == 3
    for name, value in model.state_dict().items():
        assert torch.equal(read["model"][name], value)
    # DCP flattens nested keys to strings: the optimizer's per-parameter state keys too.
    assert torch.equal(
        read["optimizer"]["state"]["0"]["momentum_buffer"],
        optimizer.state_dict()["state"][0]["momentum_buffer"],
    )
    assert read["optimizer"]["param_groups"][0]["lr"] == 0.1

    info = import_checkpoint(str(tmp_path / "dcp"), tmp_path / "run", field=None, number=3)
    tree = ron.loads((Path(info.path) / "state.ron").read_text())
    assert resolve(tree, "epoch") == 3
    assert tensor_info(resolve(tree, "model.weight")).shape == (2, 3)  # type: ignore[union-attr]
    assert resolve(tree, "optimizer.param_groups[0].momentum") == 0.9


class Boom:
    """Unpickling this runs code: what a hostile .metadata would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_dcp_metadata_cannot_run_code(tmp_path: Path) -> None:
    dcp_save({"w": torch.ones(2)}, tmp_path / "dcp")
    marker = tmp_path / "pwned"
    (tmp_path / "dcp" / ".metadata").write_bytes(pickle.dumps(Boom(str(marker))))
    with pytest.raises(ConvertError, match=r"refusing (io|builtins)\.open"):
        read_dcp(str(tmp_path / "dcp"))
    assert not marker.exists()


def test_pickle_planted_in_a_hyperstate_checkpoint_is_never_read(tmp_path: Path) -> None:
    """A checkpoint is told by COMMITTED first: a .metadata pickle in it is ignored."""
    write_checkpoint({"w": torch.ones(2)}, tmp_path / "run", number=1)
    ckpt = tmp_path / "run" / "step-000000000001"
    marker = tmp_path / "pwned"
    (ckpt / ".metadata").write_bytes(pickle.dumps(Boom(str(marker))))
    assert detect_format(str(ckpt)) == "hyperstate"
    assert detect_format(str(tmp_path / "run")) == "hyperstate"
    assert export_safetensors(ckpt, tmp_path / "out.safetensors") == ["model.w"]
    assert not marker.exists()


def test_export_round_trips_through_safetensors(tmp_path: Path) -> None:
    @dataclass
    class Tied:
        step: int
        w: torch.Tensor
        w_t: torch.Tensor  # a view of w: the checkpoint stores them once
        row: torch.Tensor
        counter: torch.Tensor
        extra: dict[str, Any]

    w = torch.arange(12.0).reshape(3, 4)
    state = Tied(1, w, w.t(), w[1], torch.tensor(7), {"b": torch.ones(2, dtype=torch.int8)})
    hyperstate.dump(state, tmp_path / "ckpt" / "state.ron")
    names = export_safetensors(tmp_path / "ckpt", tmp_path / "out.safetensors")
    assert sorted(names) == ["counter", "extra.b", "row", "w", "w_t"]
    with safe_open(tmp_path / "out.safetensors", "pt") as f:
        assert sorted(f.keys()) == sorted(names)
    out = load_file(tmp_path / "out.safetensors")
    assert torch.equal(out["w"], w) and torch.equal(out["w_t"], w.t())
    assert torch.equal(out["row"], w[1]) and out["counter"].item() == 7
    assert out["extra.b"].dtype == torch.int8

    only = export_safetensors(tmp_path / "ckpt", tmp_path / "b.safetensors", select="extra.b")
    assert only == ["b"]
    with pytest.raises(ConvertError, match="has no field 'nope'"):
        export_safetensors(tmp_path / "ckpt", tmp_path / "c.safetensors", select="nope")


def test_write_checkpoint_refuses_bad_fields_and_overwrites(tmp_path: Path) -> None:
    write_checkpoint({"a": 1}, tmp_path / "run", number=1)
    with pytest.raises(StorageError, match="already committed"):
        write_checkpoint({"a": 2}, tmp_path / "run", number=1)
    with pytest.raises(ConvertError, match="must be identifiers"):
        write_checkpoint({"0.weight": torch.ones(1)}, tmp_path / "run", field=None)
    with pytest.raises(ConvertError, match="expected a field name"):
        write_checkpoint({}, tmp_path / "run", field="a b")
    assert [c.number for c in CheckpointStore(tmp_path / "run").list()] == [1]
    assert os.listdir(tmp_path / "run") == ["step-000000000001"]


def test_tensor_refs_and_paths_in_a_tree() -> None:
    tree = ron.loads(
        "State(model: Net(state: {"
        '"fc.weight": Tensor(file: "b.safetensors", key: "k", dtype: "float16", shape: (2, 3)),'
        '"n": Tensor(dtype: "int64", value: 4)}),'
        'sharded: DTensorRef(dtype: "float32", shape: (8,), shards: [(0,), (4,)]),'
        'config: Inputs(dtype: "float32", shape: (1, 2)),'
        'opt: {0: {"lr": 0.1}}, items: [1, 2])'
    )
    weight = tensor_info(resolve(tree, "model.fc.weight"))
    assert weight is not None and weight.describe() == "Tensor float16[2, 3] 12 B"
    assert resolve(tree, "model.state.fc.weight") == resolve(tree, "model.fc.weight")
    inline = tensor_info(resolve(tree, "model.n"))
    assert inline is not None and inline.describe() == "Tensor int64 = 4"
    sharded = tensor_info(resolve(tree, "sharded"))
    assert sharded is not None and sharded.describe() == "DTensorRef float32[8] 32 B, 2 shards"
    assert tensor_info(resolve(tree, "config")) is None  # a struct that happens to say dtype
    assert resolve(tree, "opt[0].lr") == resolve(tree, "opt.0.lr") == 0.1
    assert resolve(tree, "items[1]") == 2
    found = [(path, info.kind) for path, info, _ in iter_tensors(tree)]
    assert found == [
        (("model", "fc.weight"), "Tensor"),
        (("model", "n"), "Tensor"),
        (("sharded",), "DTensorRef"),
    ]
    with pytest.raises(ConvertError, match=r"model has no field 'fc'"):
        resolve(tree, "model.fc.wieght")


def test_sharded_tensor_refs_are_read_whole(tmp_path: Path) -> None:
    # The form a distributed save writes for a DTensor sharded on dim 0 over two ranks.
    from hyperstate.tensors.safetensors import BlobWriter

    whole = torch.arange(20.0).reshape(5, 4)
    shards = []
    for rank, (start, stop) in enumerate([(0, 3), (3, 5)]):
        writer = BlobWriter(tmp_path, f"blobs/rank-{rank:05d}.safetensors")
        writer.add("table", whole[start:stop].clone())
        (ref,) = writer.write()
        shards.append(
            f'Shard(at: ({start}, 0), file: "{ref.file}", key: "{ref.key}", '
            f'shape: {ref.shape}, checksum: "{ref.checksum}")'
        )
    (tmp_path / "state.ron").write_text(
        f'State(table: Tensor(dtype: "float32", shape: (5, 4), shards: [{", ".join(shards)}]))\n'
    )
    tree = ron.loads((tmp_path / "state.ron").read_text())
    info = tensor_info(resolve(tree, "table"))
    assert info is not None and info.describe() == "Tensor float32[5, 4] 80 B, 2 shards"
    assert export_safetensors(tmp_path, tmp_path / "out.safetensors") == ["table"]
    assert torch.equal(load_file(tmp_path / "out.safetensors")["table"], whole)
