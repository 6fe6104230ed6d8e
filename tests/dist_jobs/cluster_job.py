"""A data-parallel job whose arithmetic does not depend on the number of ranks.

Two models train side by side on the same data, each with AdamW: one replicated by DDP,
one sharded by FSDP2 (``fully_shard``). Each step takes a global batch of ``BATCH``
samples, split over the ranks. For the weights to come out bit for bit the same with any
number of ranks, and the same as :func:`reference` computes in one process, the gradient
of the batch must be summed exactly, whatever the grouping of the samples:

- every sample's gradient is computed on its own (a batch of one; see :class:`ExactMLP`)
  and rounded to a whole number of ``QUANTUM`` (:class:`_Quantize`), so every partial sum,
  over a rank's samples in autograd and over the ranks in the all-reduce of DDP or the
  reduce-scatter of FSDP, is a sum of small integers: exact in float32 in any order;
- DDP sums with a comm hook that does not divide by the world size first, FSDP with a
  divide factor of 1 (both would otherwise round differently for 3 ranks than for 8);
- the exact sum is scaled to the batch mean once, by the same float32 multiplication on
  every rank and in the reference; AdamW is elementwise, so shards and whole tensors get
  the same bits.

Started with the environment torchrun sets; prints ``RESULT {json}`` per rank (and, with
``--results DIR``, writes it to ``DIR/attempt-<restart>-rank-<rank>.json``). Options:

    cluster_job.py RUN [--steps N] [--every K] [--results DIR] [--record-s3]
                   [--fail-at STEP:RANK:MARKER] [--kill-in-save NUMBER:RANK:MARKER]

``RUN`` may hold ``{rank}`` (a directory per rank). ``--fail-at`` makes RANK raise before
training step STEP unless MARKER exists (it creates it first); ``--kill-in-save`` makes
RANK SIGKILL itself as it opens its blob file of checkpoint NUMBER (through job.py's
``faulty://`` filesystem: RUN must be a ``faulty://`` URL), unless MARKER exists.
``--record-s3`` records the keys this process writes to ``s3://`` (the real s3fs, with
every write noted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BATCH = 24  # samples per step, split over the ranks: 1, 2, 3, 4, 6 or 8 of them
QUANTUM = 2.0**-12  # per-sample gradients are whole numbers of this
LIMIT = 2.0**17  # |quanta| per sample: a sum of BATCH of them stays below 2**24
SCALE = QUANTUM / BATCH  # the sum of quanta -> the gradient of the batch mean


class _Quantize(torch.autograd.Function):
    """The identity, whose gradient is rounded to a whole number of quanta."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        return t.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return torch.round(grad / QUANTUM).clamp_(-LIMIT, LIMIT)


def _q(t: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _Quantize.apply(t)
    return out


class ExactMLP(nn.Module):
    """4 -> hidden -> 1, run one sample at a time, each with its own quantized gradient."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, hidden)
        self.l2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for row in x.split(1):
            h = torch.tanh(F.linear(row, _q(self.l1.weight), _q(self.l1.bias)))
            out.append(F.linear(h, _q(self.l2.weight), _q(self.l2.bias)))
        return torch.cat(out)


@dataclass
class Config:
    steps: int = 8


@dataclass
class State:
    step: int
    ddp: nn.Module
    ddp_opt: torch.optim.Optimizer
    fsdp: nn.Module
    fsdp_opt: torch.optim.Optimizer


def _sum_hook(state, bucket):  # type: ignore[no-untyped-def]
    """DDP's all-reduce without the division by the world size first (see above).

    Unannotated: DDP checks the annotations it finds, and these would be strings."""
    import torch.distributed as dist

    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def initial_state(config: Config) -> State:
    """The models, wrapped for the job's world (or not at all in one process)."""
    import torch.distributed as dist

    torch.manual_seed(0)
    ddp: nn.Module = ExactMLP(6)
    fsdp: nn.Module = ExactMLP(12)  # 12 rows: 2 per rank of 8 (6 and 7 hold none), 4 of 3
    if dist.is_initialized():
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(ddp)
        ddp.register_comm_hook(None, _sum_hook)
        fully_shard(fsdp, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
        fsdp.set_gradient_divide_factor(1.0)  # type: ignore[operator]
        fsdp.set_force_sum_reduction_for_comms(True)  # type: ignore[operator]
    return State(
        0,
        ddp,
        torch.optim.AdamW(ddp.parameters(), lr=0.01, weight_decay=0.1),
        fsdp,
        torch.optim.AdamW(fsdp.parameters(), lr=0.01, weight_decay=0.1),
    )


def train_step(state: State, rank: int, world: int) -> None:
    """One step on this rank's share of the global batch of step ``state.step``."""
    g = torch.Generator().manual_seed(1000 + state.step)
    x = torch.randn(BATCH, 4, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    per = BATCH // world
    xb, yb = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
    for model, opt in ((state.ddp, state.ddp_opt), (state.fsdp, state.fsdp_opt)):
        ((model(xb) - yb) ** 2).sum().backward()  # the sum over ranks happens here
        for p in model.parameters():
            assert p.grad is not None
            p.grad.mul_(SCALE)
        opt.step()
        opt.zero_grad()
    state.step += 1


def weights(state: State) -> dict[str, str]:
    """Every weight's bytes, in hex, by name (collective under FSDP: full_tensor)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for prefix, model in (("ddp", state.ddp), ("fsdp", state.fsdp)):
        module = getattr(model, "module", model)  # DDP's wrapped module
        for name, p in module.named_parameters():
            t = p.full_tensor() if isinstance(p, DTensor) else p
            out[f"{prefix}.{name}"] = t.detach().contiguous().numpy().tobytes().hex()
    return out


def reference(steps: int) -> dict[str, str]:
    """The weights after ``steps`` steps of an uninterrupted run in this one process
    (no process group: the whole batch on one rank)."""
    state = initial_state(Config(steps))
    while state.step < steps:
        train_step(state, 0, 1)
    return weights(state)


WRITTEN: list[str] = []  # with --record-s3: every key this process wrote, in order


def _record_s3_writes() -> None:
    """``s3://`` through a subclass of the real s3fs that notes the key of each write."""
    import fsspec
    import s3fs

    class RecordingS3FileSystem(s3fs.S3FileSystem):  # type: ignore[misc]
        def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
            if "w" in mode:
                WRITTEN.append(self._strip_protocol(path))
            return super()._open(path, mode, *args, **kwargs)

        async def _pipe_file(self, path: str, data: Any, *args: Any, **kwargs: Any) -> Any:
            WRITTEN.append(self._strip_protocol(path))
            return await super()._pipe_file(path, data, *args, **kwargs)

    fsspec.register_implementation("s3", RecordingS3FileSystem, clobber=True)


def _marked(spec: str | None, rank: int) -> tuple[int, Path] | None:
    """``NUMBER:RANK:MARKER`` -> (NUMBER, MARKER) for RANK, if MARKER does not exist."""
    if not spec:
        return None
    number, who, marker = spec.split(":", 2)
    if int(who) != rank or Path(marker).exists():
        return None
    return int(number), Path(marker)


def main() -> None:
    import torch.distributed as dist

    import hyperstate
    from hyperstate import CheckpointPolicy
    from hyperstate.storage import CheckpointStore

    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--results")
    parser.add_argument("--record-s3", action="store_true")
    parser.add_argument("--fail-at")
    parser.add_argument("--kill-in-save")
    args = parser.parse_args()
    if args.record_s3:
        _record_s3_writes()
    if args.kill_in_save:
        sys.path.insert(0, str(Path(__file__).parent))
        import job  # noqa: F401  (registers faulty://)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    run = args.run.replace("{rank}", str(rank))
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    result: dict[str, Any] = {"rank": rank, "world": world, "attempt": restart}
    if rank == 0:
        store = CheckpointStore(run.removeprefix("faulty://"))
        result["committed_at_start"] = [i.number for i in store.list()]
    fail_at = _marked(args.fail_at, rank)
    kill = _marked(args.kill_in_save, rank)
    try:
        with hyperstate.HyperState.load(
            Config,
            State,
            initial_state,
            None,
            run,
            "step",
            [f"steps={args.steps}"],
            policy=CheckpointPolicy(every_steps=args.every),
            edit_check_seconds=None,
        ) as hs:
            state = hs.state
            result["resumed_from"] = hs.resumed_from.number if hs.resumed_from else None
            result["restored"] = weights(state)
            while state.step < hs.config.steps:
                if fail_at is not None and state.step == fail_at[0]:
                    fail_at[1].touch()
                    raise RuntimeError(f"injected failure of rank {rank} at step {state.step}")
                if kill is not None and state.step == kill[0] - 1:
                    kill[1].touch()  # the save of the next step kills this rank
                    os.environ["HYPERSTATE_TEST_FAULT"] = f"{rank}:{kill[0]}:kill"
                train_step(state, rank, world)
                hs.step()
        result["final"] = weights(state)
    except BaseException as e:  # reported, then the process ends without waiting on peers
        result["error"] = f"{type(e).__name__}: {e}"
        _emit(result, args.results, rank, restart)
        os._exit(3 if isinstance(e, hyperstate.HyperstateError) else 1)
    result["written"] = WRITTEN
    _emit(result, args.results, rank, restart)
    dist.destroy_process_group()


def _emit(result: dict[str, Any], results: str | None, rank: int, restart: int) -> None:
    line = json.dumps(result)
    print("RESULT " + line, flush=True)
    if results:
        Path(results, f"attempt-{restart}-rank-{rank}.json").write_text(line)


if __name__ == "__main__":
    main()
