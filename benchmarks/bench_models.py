"""Save and restore of real model shapes with their AdamW state, against the peers.

Run: .venv/bin/python benchmarks/bench_models.py [--model gpt2|deep|both] [--rounds 5]
[--dir DIR] [--quick] [--threads 1]

``--quick`` measures small shapes of the same two models (a smoke run, well under a minute).
``--dir`` is where checkpoints go (default: a new directory under /tmp); ``--dir /dev/shm``
writes to tmpfs, which leaves the software's own cost without the disk's. GPT-2 small
with AdamW is ~1.4 GiB per copy: the free space under ``--dir`` is checked first, and
each round's output is deleted before the next. The process needs ~6 GiB of memory for
GPT-2 (the trained objects, the new ones a restore fills, and a loader's own copy).
``--threads`` sets torch's intra-op threads for the whole run, for every system alike.
It is 1 by default: when other work shares the cores, each parallel torch op waits for
its descheduled threads (on a busy 2-core machine, summing the deep model's 2,320
tensors took 0.03 s on one thread and up to 4.7 s on two), which would swamp what is
measured. On an idle machine, ``--threads`` = the core count shows multi-threaded copies.

Two models, from plain ``torch.nn`` modules (no transformers), each with ``AdamW`` state
after one step (a backward on a batch of 2 x 16 tokens, so every parameter has its
``exp_avg``, ``exp_avg_sq`` and ``step``):

* gpt2: GPT-2 small's shape: token and position embeddings (vocabulary 50257, 1024
  positions), 12 layers of LayerNorm, qkv ``Linear(768, 2304)``, ``Linear(768, 768)``,
  LayerNorm, ``Linear(768, 3072)``, ``Linear(3072, 768)``; a final LayerNorm; the lm
  head tied to the token embedding, as in GPT-2 (stored once by every system here);
* deep: the same blocks, 48 layers x 256 (4 heads), vocabulary 8192, 1024 positions,
  tied: 2,320 tensors with AdamW's, most of them small.

Every system saves the model and the optimizer, and restores them the way a training
script does: into a new model and ``AdamW`` made by the same ``initial_state`` (built
before the clock starts: the same for all, and no part of a checkpoint's cost), then sums
every parameter and optimizer tensor, which reads every byte and checks the values:

* raw: ``write`` of the same bytes into a new file + ``fsync`` (the limit for a save);
  ``readinto`` the new model's parameters and new optimizer-state tensors (a copy of
  every byte: a loader that maps the file, as safetensors and hyperstate do, can beat it);
* ``torch.save`` of both ``state_dict()`` (fsync'd) / ``torch.load(weights_only=True)``
  + ``load_state_dict`` of the model and of the optimizer;
* ``torch.distributed.checkpoint`` (DCP): ``save`` / ``load`` of
  ``state_dict.get_state_dict`` and ``set_state_dict``, one process, no process group;
* ``safetensors`` ``save_file`` / ``load_file`` + ``load_state_dict``: the model's
  tensors only (a third of the bytes), for reference; compared per byte;
* hyperstate sync: ``StateManager.checkpoint()``; restore = a new ``StateManager`` on
  the same directory, resuming into the objects ``initial_state`` builds (blobs verified
  against their checksums, as by default);
* hyperstate async (``async_save=True``): how long ``checkpoint()`` blocks and when
  ``wait()`` returns, for a manager's first save (it allocates the staging buffers) and
  for two later saves (which reuse them);
* hyperstate async with ``async_staging=True`` (the copy to staging in the background
  too): the same, and when the copy is done (``wait_staged()``: the earliest moment an
  optimizer step goes on without waiting).

Rounds are interleaved: each runs every system once, in the order above, a save then a
restore right after it (warm: the files are in the page cache), and deletes its output.
Printed per system: the median and the min-max over the rounds for save and restore,
the speed as a multiple of raw's (``x raw`` > 1 is faster; per byte), and the peak RSS
of the whole process (``resource.getrusage`` ``ru_maxrss``, its high-water mark reset
through /proc/self/clear_refs before each save and each restore; it includes the trained
objects, for a restore the new ones, and mapped pages of the page cache). Then the
targets of issue 14 next to the figures: sync save >= 0.95x raw write on disk (>= 0.9x
on tmpfs), warm verified load >= 0.7x safetensors ``load_file``, an async
``checkpoint()`` that blocks little.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import hyperstate

GIB = 1 << 30


# ---------------------------------------------------------------------------------------
# Models


@dataclass
class Config:
    """A GPT-2-style decoder's shape; the defaults are GPT-2 small's."""

    layers: int = 12
    width: int = 768
    heads: int = 12
    vocab: int = 50257
    positions: int = 1024


SHAPES = {
    "gpt2": Config(),
    "deep": Config(layers=48, width=256, heads=4, vocab=8192, positions=1024),
}
QUICK = {
    "gpt2": Config(layers=2, width=128, heads=2, vocab=1024, positions=128),
    "deep": Config(layers=8, width=64, heads=2, vocab=512, positions=128),
}


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.fc_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (
            z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
            for z in self.qkv(self.ln_1(x)).split(c, dim=2)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab, config.width)
        self.wpe = nn.Embedding(config.positions, config.width)
        self.blocks = nn.ModuleList(Block(config.width, config.heads) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.width)
        self.lm_head = nn.Linear(config.width, config.vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.lm_head(self.ln_f(x))
        return logits


@dataclass
class State:
    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer


def initial_state(config: Config) -> State:
    model = GPT(config)
    return State(0, model, torch.optim.AdamW(model.parameters(), lr=1e-4))


def trained_state(config: Config) -> State:
    """After one AdamW step: every parameter has its exp_avg, exp_avg_sq and step."""
    torch.manual_seed(0)
    state = initial_state(config)
    tokens = torch.randint(config.vocab, (2, 17))
    logits = state.model(tokens[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step = 1
    return state


def model_tensors(state: State) -> dict[str, torch.Tensor]:
    """The model's state_dict with each storage once (the tied lm head is the embedding)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in state.model.state_dict().items():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out[name] = t
    return out


def tensors(state: State, optimizer: bool = True) -> list[torch.Tensor]:
    """Every tensor of the model and (by default) the optimizer once, in a fixed order."""
    out = list(model_tensors(state).values())
    if optimizer:
        for group in state.optimizer.param_groups:
            for p in group["params"]:
                moments = state.optimizer.state[p]
                out += [moments[k] for k in sorted(moments) if isinstance(moments[k], torch.Tensor)]
    return out


def touch(state: State, optimizer: bool = True) -> list[float]:
    """The sum of every tensor: reads every byte, and compares exactly between copies."""
    return [float(t.sum()) for t in tensors(state, optimizer)]


def nbytes(state: State, optimizer: bool = True) -> int:
    return sum(t.nbytes for t in tensors(state, optimizer))


# ---------------------------------------------------------------------------------------
# Systems: save(trained, d) is timed; restore(d, fresh) fills ``fresh``, then touch() is
# timed with it. A save that needs setup outside the clock (a manager, which exists for
# the whole of a run) is a context manager yielding the timed call.

Save = Callable[[State, Path], AbstractContextManager[Callable[[], object]]]


def _bytes_of(t: torch.Tensor) -> memoryview:
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _plain(save: Callable[[State, Path], None], state: State, d: Path) -> Any:
    yield lambda: save(state, d)


def save_raw(state: State, d: Path) -> None:
    with open(d / "raw.bin", "wb", buffering=1 << 20) as f:
        for t in tensors(state):
            f.write(_bytes_of(t))
        f.flush()
        os.fsync(f.fileno())


def restore_raw(d: Path, fresh: State) -> None:
    # The bytes' layout is known: the parameters, then per parameter AdamW's state in
    # sorted key order (exp_avg, exp_avg_sq, step), as tensors() lists them.
    for group in fresh.optimizer.param_groups:
        for p in group["params"]:
            fresh.optimizer.state[p] = {
                "exp_avg": torch.empty_like(p, requires_grad=False),
                "exp_avg_sq": torch.empty_like(p, requires_grad=False),
                "step": torch.empty((), dtype=torch.float32),
            }
    with open(d / "raw.bin", "rb", buffering=1 << 20) as f:
        for t in tensors(fresh):
            f.readinto(_bytes_of(t))


def save_torch(state: State, d: Path) -> None:
    with open(d / "state.pt", "wb") as f:
        torch.save({"model": state.model.state_dict(), "optim": state.optimizer.state_dict()}, f)
        f.flush()
        os.fsync(f.fileno())


def restore_torch(d: Path, fresh: State) -> None:
    saved = torch.load(d / "state.pt", weights_only=True)
    fresh.model.load_state_dict(saved["model"])
    fresh.optimizer.load_state_dict(saved["optim"])


def save_dcp(state: State, d: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: assuming a single process"
        model, optim = get_state_dict(state.model, state.optimizer)
        dcp.save({"model": model, "optim": optim}, checkpoint_id=d / "dcp")  # fsyncs


def restore_dcp(d: Path, fresh: State) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # For a new optimizer, get_state_dict first makes its state (a step with lr=0).
        model, optim = get_state_dict(fresh.model, fresh.optimizer)
        both = {"model": model, "optim": optim}
        dcp.load(both, checkpoint_id=d / "dcp")
        set_state_dict(
            fresh.model,
            fresh.optimizer,
            model_state_dict=both["model"],
            optim_state_dict=both["optim"],
        )


def save_safetensors(state: State, d: Path) -> None:
    from safetensors.torch import save_file

    save_file(model_tensors(state), d / "model.safetensors")  # refuses tied duplicates
    _fsync(d / "model.safetensors")


def restore_safetensors(d: Path, fresh: State) -> None:
    from safetensors.torch import load_file

    result = fresh.model.load_state_dict(load_file(d / "model.safetensors"), strict=False)
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys, result


def manager(
    d: Path, initial: Callable[[Config], State], config: Config | None = None, **kwargs: Any
) -> hyperstate.StateManager[Config, State]:
    """A training script's manager: a new run saving ``config``, or (None) a resume."""
    overrides = (
        None if config is None else [f"{f.name}={getattr(config, f.name)}" for f in fields(config)]
    )
    return hyperstate.StateManager(
        Config,
        State,
        initial,
        None,
        d,
        "step",
        overrides,
        edit_check_seconds=None,
        save_on_close=False,
        handle_signals=False,
        **kwargs,
    )


def hyperstate_saver(config: Config) -> Save:
    @contextmanager
    def save(state: State, d: Path) -> Any:
        hs = manager(d, lambda c: state, config)
        try:
            yield hs.checkpoint
        finally:
            hs.close()

    return save


def restore_hyperstate(d: Path, fresh: State) -> None:
    hs = manager(d, lambda c: fresh)
    hs.close()
    assert hs.resumed_from is not None and hs.state.model is fresh.model


@dataclass(frozen=True)
class System:
    name: str
    save: Save
    restore: Callable[[Path, State], None]
    optimizer: bool = True  # False: saves the model's tensors only


def systems(config: Config) -> list[System]:
    def plain(save: Callable[[State, Path], None]) -> Save:
        return lambda state, d: _plain(save, state, d)

    return [
        System("raw write+fsync / readinto", plain(save_raw), restore_raw),
        System("torch.save / torch.load", plain(save_torch), restore_torch),
        System("DCP (one process, no PG)", plain(save_dcp), restore_dcp),
        System("safetensors (model only)", plain(save_safetensors), restore_safetensors, False),
        System("hyperstate sync", hyperstate_saver(config), restore_hyperstate),
    ]


RAW, SAFETENSORS, SYNC = "raw write+fsync / readinto", "safetensors (model only)", "hyperstate sync"
ASYNC_FIRST, ASYNC_LATER = "hyperstate async, first save", "hyperstate async, later saves"
STAGED_FIRST = "hyperstate async_staging, first save"
STAGED_LATER = "hyperstate async_staging, later saves"


# ---------------------------------------------------------------------------------------
# Measuring


def reset_peak() -> bool:
    """Set the process's RSS high-water mark (ru_maxrss, VmHWM) to its RSS; False: can't."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@dataclass
class Figures:
    save: list[float] = field(default_factory=list)
    restore: list[float] = field(default_factory=list)
    blocked: list[float] = field(default_factory=list)  # async: checkpoint() alone
    staged: list[float] = field(default_factory=list)  # async: until the copy is done
    save_peak: int = 0
    restore_peak: int = 0


def timed(fn: Callable[[], Any]) -> tuple[float, int, Any]:
    """(seconds, peak RSS of the whole process meanwhile, value)."""
    gc.collect()
    reset_peak()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, peak_rss(), value


def run_system(
    system: System, trained: State, config: Config, expected: list[float], root: Path, f: Figures
) -> None:
    d = Path(tempfile.mkdtemp(dir=root))
    try:
        with system.save(trained, d) as save:
            seconds, peak, _ = timed(save)
        f.save.append(seconds)
        f.save_peak = max(f.save_peak, peak)
        fresh = initial_state(config)  # what initial_state builds, before the clock starts

        def restore() -> list[float]:
            system.restore(d, fresh)
            return touch(fresh, system.optimizer)

        seconds, peak, sums = timed(restore)
        wanted = expected if system.optimizer else expected[: len(sums)]
        assert sums == wanted, f"{system.name}: the restored values differ"
        f.restore.append(seconds)
        f.restore_peak = max(f.restore_peak, peak)
    finally:
        shutil.rmtree(d)


def run_async(
    trained: State,
    config: Config,
    root: Path,
    first: Figures,
    later: Figures,
    saves: int = 3,
    staging: bool = False,
) -> None:
    """A new async manager's first save, then ``saves - 1`` more that reuse its staging;
    with ``staging``, the copy to staging runs in the background too (``async_staging``)."""
    d = Path(tempfile.mkdtemp(dir=root))
    hs = manager(d, lambda c: trained, config, async_save=True, async_staging=staging)
    try:
        for i in range(saves):
            if i:  # untimed, as a retention policy would have done it in the background
                shutil.rmtree(d / f"step-{trained.step - 1:012d}")
            gc.collect()
            reset_peak()
            start = time.perf_counter()
            hs.checkpoint()
            blocked = time.perf_counter() - start
            hs.wait_staged()  # when an optimizer step could go on
            staged = time.perf_counter() - start
            info = hs.wait()
            total = time.perf_counter() - start
            assert info is not None and info.number == trained.step
            f = first if i == 0 else later
            f.blocked.append(blocked)
            f.staged.append(staged)
            f.save.append(total)
            f.save_peak = max(f.save_peak, peak_rss())
            trained.step += 1
    finally:
        hs.close()
        trained.step = 1
        shutil.rmtree(d)


def filesystem(path: Path) -> str:
    """The type of the filesystem that holds ``path`` (from /proc/mounts), or '?'."""
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                _, mount, fstype, *_ = line.split()
                inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
                if inside and len(mount) > len(best):
                    best, kind = mount, fstype
    except OSError:
        pass
    return kind


# ---------------------------------------------------------------------------------------
# Report


def spread(values: list[float]) -> str:
    """Median [min-max], seconds, in 24 columns."""
    return f"{statistics.median(values):7.3f} [{min(values):.3f}-{max(values):.3f}]".ljust(24)


def describe(name: str, config: Config, trained: State) -> str:
    params = sum(p.numel() for p in trained.model.parameters())
    return (
        f"{name}: {config.layers} layers x {config.width} ({config.heads} heads), "
        f"vocabulary {config.vocab}, {config.positions} positions, lm head tied to the "
        f"token embedding; {params / 1e6:.1f}M parameters; with AdamW after one step: "
        f"{len(tensors(trained))} tensors, {nbytes(trained) / GIB:.3f} GiB "
        f"(model {nbytes(trained, False) / GIB:.3f} GiB)"
    )


def report(
    trained: State, results: dict[str, Figures], fs: str, build: list[float], sums: list[float]
) -> None:
    size, model_size = nbytes(trained), nbytes(trained, False)
    raw = results[RAW]
    raw_save, raw_restore = statistics.median(raw.save), statistics.median(raw.restore)
    rounds = len(raw.save)
    print(
        f"initial_state() (outside the clock): {statistics.median(build):.3f} s; "
        f"the sum of every tensor (inside every restore): {statistics.median(sums):.3f} s"
    )
    print(
        f"seconds: median [min-max] of {rounds} rounds; x raw: speed per byte against raw "
        "(> 1 faster); restores are warm; peak RSS: of the whole process, GiB"
    )
    head = (
        f"{'system':38} {'save s [min-max]':24} {'x raw':>5} | "
        f"{'restore s [min-max]':24} {'x raw':>5} | peak RSS save / restore"
    )
    print(head)
    print("-" * len(head))
    for name, f in results.items():
        share = (model_size if name == SAFETENSORS else size) / size
        row = f"{name:38} {spread(f.save)} {raw_save * share / statistics.median(f.save):5.2f} | "
        if f.restore:
            restore = statistics.median(f.restore)
            row += f"{spread(f.restore)} {raw_restore * share / restore:5.2f} | "
            row += f"{f.save_peak / GIB:.2f} / {f.restore_peak / GIB:.2f}"
        else:
            row += f"{'(restored as hyperstate sync)':30} | {f.save_peak / GIB:.2f} / -"
        print(row)
    for name in (ASYNC_FIRST, ASYNC_LATER, STAGED_FIRST, STAGED_LATER):
        f = results[name]
        print(
            f"{name}: checkpoint() blocks {spread(f.blocked).strip()} s, the copy is done "
            f"after {spread(f.staged).strip()} s, wait() returns after "
            f"{spread(f.save).strip()} s (median [min-max])"
        )
    sync = results[SYNC]
    sync_save = statistics.median(sync.save)
    on_tmpfs = fs in ("tmpfs", "ramfs")
    target = 0.9 if on_tmpfs else 0.95
    print(f"targets (issue 14; this directory is on {fs}):")
    print(
        f"  hyperstate sync save / raw write+fsync: {raw_save / sync_save:.2f}x "
        f"(target >= {target} {'on tmpfs' if on_tmpfs else 'on disk'})"
    )
    st = results[SAFETENSORS]
    per_byte = (statistics.median(st.restore) / model_size) / (
        statistics.median(sync.restore) / size
    )
    print(
        f"  hyperstate verified restore (warm) / safetensors load_file, per byte: "
        f"{per_byte:.2f}x (target >= 0.7)"
    )
    for name, target in ((ASYNC_LATER, "< 5%"), (ASYNC_FIRST, "< 15%")):
        for staged in (False, True):
            key = name if not staged else (STAGED_LATER if name == ASYNC_LATER else STAGED_FIRST)
            blocked = statistics.median(results[key].blocked)
            copy = statistics.median(results[key].staged)
            print(
                f"  {key}: checkpoint() blocks {blocked:.3f} s = {blocked / sync_save:.1%} "
                f"of a sync save (target {target}); until the copy is done: "
                f"{copy / sync_save:.1%}"
            )


def bench_model(name: str, config: Config, rounds: int, root: Path, fs: str) -> None:
    trained = trained_state(config)
    print(f"\n## {describe(name, config, trained)}")
    # At most two copies at once: an async save, and the one before it.
    need = 2 * nbytes(trained) + (64 << 20)
    free = shutil.disk_usage(root).free
    if free < need:
        sys.exit(
            f"not enough free space under {root}: {free / GIB:.2f} GiB free, "
            f"{need / GIB:.2f} GiB needed"
        )
    print(f"free space under {root}: {free / GIB:.1f} GiB ({need / GIB:.2f} GiB needed)")
    expected = touch(trained)
    print(f"RSS of the process holding the trained objects: {rss() / GIB:.2f} GiB")
    results: dict[str, Figures] = {}
    build, sums = [], []
    for _ in range(rounds):
        for system in systems(config):
            figures = results.setdefault(system.name, Figures())
            run_system(system, trained, config, expected, root, figures)
        first = results.setdefault(ASYNC_FIRST, Figures())
        run_async(trained, config, root, first, results.setdefault(ASYNC_LATER, Figures()))
        first = results.setdefault(STAGED_FIRST, Figures())
        later = results.setdefault(STAGED_LATER, Figures())
        run_async(trained, config, root, first, later, staging=True)
        build.append(timed(lambda: initial_state(config))[0])
        sums.append(timed(lambda: touch(trained))[0])
    report(trained, results, fs, build, sums)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default /tmp)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", choices=["gpt2", "deep", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke run")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1; see above)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = QUICK if args.quick else SHAPES
    names = ["gpt2", "deep"] if args.model == "both" else [args.model]
    root = Path(tempfile.mkdtemp(prefix="bench-models-", dir=args.dir)).resolve()
    fs = filesystem(root)
    print(
        f"torch {torch.__version__}, hyperstate {hyperstate.__version__}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; writing under "
        f"{root} ({fs}); {args.rounds} rounds"
        + ("" if reset_peak() else "; peak RSS: the process's lifetime peak (no clear_refs)")
    )
    try:
        for name in names:
            bench_model(name, shapes[name], args.rounds, root, fs)
            gc.collect()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
