"""torch.distributed.checkpoint through hyperstate's storage layers, on an FSDP2 model.

    dcp_job.py save OUT    train a fully_shard model with AdamW for 2 steps; dcp.save and
                           dcp.async_save its state (get_state_dict) to OUT/sync/step-... and
                           OUT/async/step-...; rank 0 writes every full tensor and value to
                           OUT/expected.pt
    dcp_job.py load OUT    a fresh model (other weights) on this world size; dcp.load each
                           checkpoint into it (set_state_dict) and check every rank's local
                           shards against OUT/expected.pt; rank 0 writes what it restored,
                           whole, to OUT/loaded-<sync|async>.pt

Prints ``RESULT {json}`` per rank.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from hyperstate.distributed import StorageReader, StorageWriter

CHECKPOINTS = {"sync": "sync/step-000000000002", "async": "async/step-000000000002"}


def build(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    # 7 rows over 2 or 4 ranks: uneven shards (4 ranks: 2, 2, 2, 1).
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))
    fully_shard(model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
    return model, torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.95))


def full(state: Any) -> Any:
    """The state dict with every DTensor gathered whole (collective: every rank)."""
    if isinstance(state, dict):
        return {k: full(v) for k, v in state.items()}
    if isinstance(state, list):
        return [full(v) for v in state]
    if isinstance(state, DTensor):
        return state.full_tensor()
    return state


def local_shards_match(state: Any, expected: Any) -> bool:
    """Each DTensor's local shard equals its slice of the expected whole tensor."""
    if isinstance(state, dict):
        return all(local_shards_match(v, expected[k]) for k, v in state.items())
    if isinstance(state, list):
        return all(local_shards_match(v, e) for v, e in zip(state, expected, strict=True))
    if isinstance(state, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        shape, offset = compute_local_shape_and_global_offset(
            state.shape, state.device_mesh, state.placements
        )
        part = expected[tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))]
        return torch.equal(state.to_local(), part)
    if isinstance(state, torch.Tensor):
        return torch.equal(state, expected)
    return bool(state == expected)


def save(out: Path) -> dict[str, Any]:
    model, optimizer = build(0)
    for step in range(2):
        x = torch.randn(4, 5, generator=torch.Generator().manual_seed(step))
        model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd, "extra": {"epoch": 3, "tags": ("a", None)}}
    dcp.save(state, storage_writer=StorageWriter(out / CHECKPOINTS["sync"]))
    pending = dcp.async_save(state, storage_writer=StorageWriter(out / CHECKPOINTS["async"]))
    pending.result()  # type: ignore[union-attr]
    whole = full(state)
    if dist.get_rank() == 0:
        torch.save(whole, out / "expected.pt")
    return {"saved": True}


def load(out: Path) -> dict[str, Any]:
    expected = torch.load(out / "expected.pt", weights_only=True)
    result: dict[str, Any] = {}
    for name, directory in CHECKPOINTS.items():
        model, optimizer = build(1)  # other weights: everything must come from the file
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd, "extra": {"epoch": 0, "tags": ()}}
        dcp.load(state, storage_reader=StorageReader(out / directory))
        set_state_dict(
            model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        restored = dict(zip(("model", "optim"), get_state_dict(model, optimizer), strict=True))
        result[f"{name}_local_shards_match"] = local_shards_match(
            restored, {k: expected[k] for k in ("model", "optim")}
        )
        result[f"{name}_lr"] = optimizer.param_groups[0]["lr"]
        whole = full({**restored, "extra": state["extra"]})
        if dist.get_rank() == 0:
            torch.save(whole, out / f"loaded-{name}.pt")
    return result


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    result = {"rank": dist.get_rank(), **(save(out) if mode == "save" else load(out))}
    print("RESULT " + json.dumps(result), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
