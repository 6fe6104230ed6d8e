"""Bounded fuzzing of every input surface: "a HyperstateError or success, nothing else".

Surfaces: typed config values with substituted literals, command-line overrides,
``state.ron`` token mutations, blob header bytes, ``COMMITTED``, live edit requests, and
the ``hyperstate`` command on a corpus of damaged checkpoints. (RON text itself is fuzzed
in ``test_ron_fuzz.py``, DCP ``.metadata`` in ``test_trust_dcp.py``.) Each property runs a
fixed number of examples, so the suite's time stays bounded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hyperstate
from hyperstate.edits import request_edit
from hyperstate.storage import CheckpointStore
from hyperstate.tools.cli import main

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# RON tokens: strings, numbers, words, punctuation (comments are not produced by the
# emitter, so not needed to split its output).
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-?[0-9][0-9a-zA-Z_.+-]*|[A-Za-z_][A-Za-z0-9_]*|\S')
# What a mutation may put in a token's place, besides the text's own tokens.
ODD_TOKENS = [
    "-1",
    "0",
    "1e400",
    "-0.0",
    "NaN",
    "inf",
    "1" + "0" * 400,
    "9" * 5000,
    '"x"',
    '""',
    '"../../etc/passwd"',
    '"/abs"',
    '"blobs"',
    "None",
    "Some(",
    "true",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "Tensor(",
    "()",
    "[]",
    "{}",
    '"\\u{0}"',
    "'c'",
]


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """``text`` with one to three tokens replaced, deleted or duplicated."""
    spans = [m.span() for m in TOKEN.finditer(text)]
    pool = sorted({text[a:b] for a, b in spans}) + ODD_TOKENS
    for _ in range(draw(st.integers(1, 3))):
        spans = [m.span() for m in TOKEN.finditer(text)]
        a, b = draw(st.sampled_from(spans))
        action = draw(st.sampled_from(["replace", "delete", "duplicate"]))
        if action == "replace":
            text = text[:a] + draw(st.sampled_from(pool)) + text[b:]
        elif action == "delete":
            text = text[:a] + text[b:]
        else:
            text = text[:b] + " " + text[a:b] + text[b:]
    return text


# -- typed config values, and overrides ---------------------------------------------------


class Activation(enum.Enum):
    RELU = "relu"
    GELU = "gelu"


@dataclass
class Optimizer:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "step: 3e-4@0 cos 0.0@1000"


@dataclass
class Layer:
    width: int = 64
    activation: Activation = Activation.RELU


@dataclass
class Config:
    optimizer: Optimizer = dataclasses.field(default_factory=Optimizer)
    layers: list[Layer] = dataclasses.field(default_factory=lambda: [Layer(), Layer(32)])
    tags: dict[str, int] = dataclasses.field(default_factory=lambda: {"a": 1, "b.c": 2})
    seed: int | None = 7
    name: str = "run"
    extra: Any = None


CONFIG_TEXT = hyperstate.dumps(Config(extra={"k": [1, 2.5, "s", None]}))


@FUZZ
@given(mutated(CONFIG_TEXT))
def test_typed_config_text(text: str) -> None:
    with contextlib.suppress(hyperstate.HyperstateError):
        hyperstate.loads(Config, text)


OVERRIDE_PATHS = [
    "optimizer.lr",
    "optimizer.betas",
    "optimizer.betas[1]",
    "layers[0].width",
    "layers[5].width",
    "layers[-1]",
    "layers",
    "tags[a]",
    'tags["b.c"]',
    "tags",
    "seed",
    "name",
    "extra",
    "extra.k[0]",
    "nope",
    "",
    "optimizer..lr",
    "m[" + "9" * 5000 + "]",
]


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(OVERRIDE_PATHS),
            st.one_of(st.sampled_from(ODD_TOKENS), st.text(max_size=12)),
            st.sampled_from(["=", "+=", "==", ""]),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_overrides(overrides: list[tuple[str, str, str]]) -> None:
    with contextlib.suppress(hyperstate.HyperstateError):
        hyperstate.loads(Config, CONFIG_TEXT, [f"{p}{op}{v}" for p, v, op in overrides])


# -- state.ron ---------------------------------------------------------------------------------


class Counter(hyperstate.Serializable):
    def __init__(self, n: int = 0) -> None:
        self.n = n

    def serialize(self) -> Any:
        return {"n": self.n}

    @classmethod
    def deserialize(cls, state: Any, ctx: dict[str, Any]) -> Counter:
        return cls(state["n"])


@dataclass
class State:
    step: int
    big: torch.Tensor
    view: torch.Tensor
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    counter: Counter
    rng: torch.Generator
    extra: dict[str, Any]


def initial_state(config: Any = None) -> State:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    big = torch.arange(8.0)
    return State(
        0,
        big,
        big[2:5],
        model,
        torch.optim.AdamW(model.parameters()),
        Counter(),
        torch.Generator().manual_seed(1),
        {"t": torch.ones(2, dtype=torch.float16), "n": 3},
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed checkpoint (step 1 of a run), written once for the module."""
    run = tmp_path_factory.mktemp("fuzz-run")
    hs = hyperstate.StateManager(Config, State, initial_state, None, run, "step")
    hs.state.model(torch.ones(1, 3)).sum().backward()
    hs.state.opt.step()
    hs.state.step = 1
    hs.checkpoint()
    hs.close()
    (found,) = run.glob("step-*")
    return found


@FUZZ
@given(data=st.data())
def test_state_text(checkpoint: Path, data: st.DataObject) -> None:
    text = (checkpoint / "state.ron").read_text()
    crafted = checkpoint / "crafted.ron"
    crafted.write_text(data.draw(mutated(text)))
    with contextlib.suppress(hyperstate.HyperstateError):
        hyperstate.load(State, crafted, initial_state=initial_state)


# -- blob header bytes -------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_blob_header_bytes(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    directory = tmp_path_factory.mktemp("blob")
    writer = hyperstate.tensors.BlobWriter(directory, "b.safetensors")
    writer.add("a", torch.arange(6.0).reshape(2, 3))
    writer.add("b", torch.arange(4, dtype=torch.int16))
    refs = writer.write()
    path = directory / "b.safetensors"
    raw = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(raw[:8], "little")
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, header_end - 1))
        raw[i] = data.draw(st.integers(0, 255))
    path.write_bytes(bytes(raw))
    try:
        with hyperstate.tensors.BlobReader(directory, "b.safetensors") as reader:
            values = [reader.read(ref) for ref in refs]
    except hyperstate.HyperstateError:
        return
    # Accepted only if what is read is what was written.
    assert torch.equal(values[0], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(values[1], torch.arange(4, dtype=torch.int16))


# -- COMMITTED -------------------------------------------------------------------------------


@dataclass
class Weights:
    step: int = 0
    w: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(16))


@dataclass
class Plain:
    lr: float = 0.1


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("committed-run")
    hs = hyperstate.StateManager(Plain, Weights, lambda c: Weights(), None, run, "step")
    for step in (1, 2):
        hs.state.step = step
        hs.state.w = torch.full((16,), float(step))
        hs.checkpoint()
    hs.close()
    return run


@contextlib.contextmanager
def replaced(path: Path, text: str) -> Iterator[None]:
    """``path`` holds ``text`` within the block, and its own content again after it."""
    original = path.read_bytes()
    path.write_text(text)
    try:
        yield
    finally:
        path.write_bytes(original)


@FUZZ
@given(data=st.data())
def test_committed(two_step_run: Path, data: st.DataObject) -> None:
    newest = two_step_run / "step-000000000002" / "COMMITTED"
    with replaced(newest, data.draw(mutated(newest.read_text()))):
        store = CheckpointStore(str(two_step_run))
        try:
            store.list()
            store.verify(2)
        except hyperstate.HyperstateError:
            pass
        try:
            hs = hyperstate.StateManager(
                Plain, Weights, lambda c: Weights(), None, two_step_run, "step"
            )
        except hyperstate.HyperstateError:
            return
        # Whatever it resumed from, it holds that checkpoint's values, never garbage.
        number = hs.resumed_from.number if hs.resumed_from is not None else 0
        assert hs.state.step == number
        assert torch.equal(hs.state.w, torch.full((16,), float(number)))
        hs.close()


# -- live edit requests ------------------------------------------------------------------------


@FUZZ
@given(
    data=st.one_of(
        mutated('["lr=0.5"]').map(str.encode),
        st.text(max_size=40).map(str.encode),
        st.binary(max_size=40),
    )
)
def test_edit_requests(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    run = tmp_path_factory.mktemp("edits")
    hs = hyperstate.StateManager(
        Plain, Weights, lambda c: Weights(), None, run, "step", edit_check_seconds=0
    )
    request = Path(request_edit(run, ["lr=0.25"]))
    request.write_bytes(data)
    hs.state.step += 1
    hs.step()  # never raises, whatever the request holds
    hs.close()
    outcome = [p.suffix for p in request.parent.glob(request.name + ".*")]
    assert outcome in ([".applied"], [".rejected"])
    assert isinstance(hs.config.lr, float)


# -- the command, on damaged checkpoints -------------------------------------------------------


def damage(run: Path, case: str) -> Path:
    """Checkpoint 2 of ``run``, damaged as ``case`` says; returns it."""
    ckpt = run / "step-000000000002"
    state, blob = ckpt / "state.ron", ckpt / "blobs" / "rank-00000.safetensors"
    if case == "fifo state":
        state.unlink()
        os.mkfifo(state)
    elif case == "link out":
        state.unlink()
        state.symlink_to("/etc/passwd")
    elif case == "dev zero":
        blob.unlink()
        blob.symlink_to("/dev/zero")
    elif case == "not utf-8":
        state.write_bytes(state.read_bytes().replace(b"step", b"st\xffp", 1))
    elif case == "huge size":
        committed = ckpt / "COMMITTED"
        committed.write_text(re.sub(r"size: \d+", "size: " + "9" * 401, committed.read_text()))
    elif case == "huge shape":
        state.write_text(
            re.sub(r"shape: \(16,\)", "shape: (" + "9" * 401 + ",)", state.read_text())
        )
    elif case == "bad committed":
        (ckpt / "COMMITTED").write_text("Committed(format: [")
    elif case == "truncated blob":
        blob.write_bytes(blob.read_bytes()[:20])
    elif case == "header flip":
        raw = bytearray(blob.read_bytes())
        raw[12] ^= 0x20
        blob.write_bytes(bytes(raw))
    elif case == "state is a directory":
        state.unlink()
        state.mkdir()
    elif case == "blobs is a file":
        shutil.rmtree(ckpt / "blobs")
        (ckpt / "blobs").write_text("x")
    elif case == "crafted record":
        state.write_text(state.read_text().replace('dtype: "float32"', 'dtype: ["F32"]', 1))
    else:
        raise AssertionError(case)
    return ckpt


DAMAGE = [
    "fifo state",
    "link out",
    "dev zero",
    "not utf-8",
    "huge size",
    "huge shape",
    "bad committed",
    "truncated blob",
    "header flip",
    "state is a directory",
    "blobs is a file",
    "crafted record",
]


@pytest.mark.parametrize("case", DAMAGE)
def test_every_command_fails_with_one_line_on_a_damaged_checkpoint(
    tmp_path: Path, two_step_run: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_step_run, run, symlinks=True)
    ckpt = damage(run, case)
    other = run / "step-000000000001"
    commands = [
        ["ls", str(run)],
        ["ls", str(run), "--json"],
        ["show", str(ckpt)],
        ["show", str(ckpt), "--json"],
        ["show", str(run)],
        ["verify", str(ckpt)],
        ["verify", str(run), "--json"],
        ["diff", str(other), str(ckpt)],
        ["diff", str(other), str(ckpt), "--values"],
        ["convert", str(ckpt), str(tmp_path / "out.safetensors")],
        ["convert", str(ckpt / "state.ron"), str(tmp_path / "imported")],
    ]
    for argv in commands:
        status = main(argv)
        out, err = capsys.readouterr()
        assert status in (0, 1, 2), (argv, status)
        if status == 2:
            assert len(err.strip().splitlines()) == 1, (argv, err)
            assert "internal error" not in err, (argv, err)
        assert "root:" not in out + err  # never quote a file outside the checkpoint
