"""The command around a run's life: checked live edits (``set``, ``--wait``), ``convert``
to ``torch.save`` files, typed ``diff``, shell completion, and the run metadata that
every checkpoint records (``show``, ``ls --long``).

Commands run as subprocesses (``hs``), on runs that the library wrote.
"""

from __future__ import annotations

import enum
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
from dist_jobs.launch import launch
from test_cli import hs, one_error_line

import hyperstate
from hyperstate.edits import apply_edit
from hyperstate.schema.model import dump_schema
from hyperstate.storage import COMMITTED, CheckpointStore, Manifest, RunInfo

# -- a run to edit ----------------------------------------------------------------------


class Act(enum.Enum):
    relu = 1
    gelu = 2


@dataclass
class Optim:
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)


@dataclass
class Layer:
    width: int = 4


@dataclass
class Config:
    optimizer: Optim = field(default_factory=Optim)
    batch_size: int = 32
    flag: bool = False
    name: str = "base"
    act: Act = Act.relu
    dropout: Optional[float] = None
    layers: list[Layer] = field(default_factory=lambda: [Layer(), Layer(8)])
    tags: dict[str, int] = field(default_factory=lambda: {"a": 1})
    warmup: float = 0.0  # a schedule in the run


@dataclass
class State:
    step: int = 0


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with one committed checkpoint (no process is running it)."""
    root = tmp_path_factory.mktemp("life") / "run"
    warmup = ["warmup=step: 0@0 lin 1@100"]
    with hyperstate.HyperState.load(
        Config, State, lambda c: State(), None, root, "step", warmup
    ) as h:
        h.state.step += 1
        h.step()
    return root


def requests(run_dir: Path) -> list[str]:
    edits = run_dir / "edits"
    return sorted(p.name for p in edits.iterdir()) if edits.exists() else []


# -- set: the edit is checked before it is written ---------------------------------------


def test_set_on_a_missing_directory_creates_nothing(tmp_path: Path) -> None:
    line = one_error_line(hs("set", str(tmp_path / "nope"), "lr=1"), "set")
    assert "nope: no such directory" in line
    assert not (tmp_path / "nope").exists()


def test_set_needs_a_committed_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "step-000000000001").mkdir()  # a save in progress, not committed
    (tmp_path / "step-000000000001" / "config.ron").write_text("Config(lr: 0.1)\n")
    line = one_error_line(hs("set", str(tmp_path), "lr=1"), "set")
    assert f"no committed checkpoint in {tmp_path}" in line
    assert requests(tmp_path) == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("optimizer.lrr=0.1", "unknown field 'lrr' in Optim at optimizer.lrr"),
        ("optimizer.lr=abc", "expected a number or a schedule (the file holds 0.1), found abc"),
        ("optimizer.lr=step: 1@0 cosx 0@9", "found 'cosx'"),
        ("batch_size=0.5", "expected an int (the file holds 32), found 0.5 at batch_size"),
        ("flag=maybe", "expected true or false (the file holds false), found maybe"),
        ("act=3", "expected a variant name (the file holds relu), found 3"),
        ("optimizer=(lrr: 1.0)", "unknown field 'lrr' in Optim at optimizer.lrr"),
        ('optimizer.betas=(0.9, "x")', 'found "x" at optimizer.betas[1]'),
        ("layers[2].width=3", "index 2 out of range for layers (length 2) at layers[2]"),
        ("layers+=[Layer(widht: 3)]", "unknown field 'widht' in Layer at layers[0].widht"),
        ("batch_size+=1", "'+=' appends to a list or merges into a map, found 32"),
        ("optimizer.lr.x=1", "expected a struct, list or map, found 0.1 (no item 'x')"),
        ('tags={"b": 0.5}', "expected an int (the file holds 1), found 0.5 at tags.b"),
        ("nonsense", "malformed override"),
        ("warmup=fast", 'expected a number or a schedule (the file holds "step: 0@0 lin 1@100")'),
        ('warmup="slow"', 'found "slow" at warmup'),
    ],
)
def test_set_refuses_an_edit_that_does_not_fit_and_writes_nothing(
    run: Path, edit: str, message: str
) -> None:
    line = one_error_line(hs("set", str(run), edit), "set")
    config = run / "step-000000000001" / "config.ron"
    assert f"the edit does not fit {config}: " in line or "malformed" in message
    assert message in line
    assert f"(from override {edit!r})" in line
    assert requests(run) == []


def test_set_suggests_the_field_meant(run: Path) -> None:
    line = one_error_line(hs("set", str(run), "optimizer.lrr=0.1"), "set")
    assert line.endswith("; did you mean 'lr'?")


def test_set_lists_every_bad_override_on_one_line(run: Path) -> None:
    line = one_error_line(hs("set", str(run), "optimizer.lrr=0.1", "batch_size=x"), "set")
    assert ": 2 problems: (1) unknown field 'lrr'" in line
    assert "; (2) expected an int" in line
    assert requests(run) == []


GOOD_EDITS = [
    ["optimizer.lr=1e-4"],
    ["optimizer.lr=2"],  # an int is a float too
    ["optimizer.lr=step: 1e-3@0 cos 0@100"],  # a schedule needs no quotes
    ['optimizer.lr="step: 1e-3@0 lin 0@100"'],
    ["batch_size=64", "flag=true", "name=new-name"],
    ["flag=1", "act=gelu", "dropout=0.25"],
    ["dropout=None", "name=123"],
    ["optimizer=Optim(lr: 0.2)", "optimizer.betas=(0.8, 0.9)"],
    ["layers+=[Layer(width: 3)]", "layers[1].width=16", "layers[-1].width=2"],
    ["tags.b=2", 'tags+={"c": 3}'],
    ["warmup=0.5"],  # a schedule may be replaced by a number
    ["warmup=step: 0@0 cos 1@50"],
]


@pytest.mark.parametrize("edit", GOOD_EDITS, ids=lambda e: " ".join(e))
def test_set_requests_an_edit_that_fits_and_the_run_accepts_it(
    tmp_path: Path, run: Path, edit: list[str]
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    result = hs("set", str(copy), *edit)
    assert result.returncode == 0, result.stderr
    (request,) = requests(copy)
    assert result.stdout == f"requested: {copy / 'edits' / request}\n"
    # What the command lets through, the run's own check (its config class) accepts.
    apply_edit(Config(), edit)


def test_no_check_leaves_the_check_to_the_run(tmp_path: Path, run: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    result = hs("set", str(copy), "optimizer.lrr=0.1", "--no-check")
    assert result.returncode == 0, result.stderr
    assert len(requests(copy)) == 1
    line = one_error_line(hs("set", str(tmp_path / "nope"), "lr=1", "--no-check"), "set")
    assert "no such directory" in line


# -- set --wait: a real run answers ------------------------------------------------------

TRAIN = textwrap.dedent(
    """
    import sys, time
    from dataclasses import dataclass
    from pathlib import Path

    import hyperstate

    @dataclass
    class Config:
        lr: float = 0.1
        batch_size: int = 32

    @dataclass
    class State:
        step: int = 0

    run, stop = sys.argv[1], Path(sys.argv[2])
    policy = hyperstate.CheckpointPolicy(every_steps=10**9)  # one checkpoint, at the start
    with hyperstate.HyperState.load(
        Config, State, lambda c: State(), None, run, "step", edit_check_seconds=0, policy=policy
    ) as hs:
        hs.checkpoint()
        deadline = time.monotonic() + 300  # never outlive the test
        while not stop.exists() and time.monotonic() < deadline:
            hs.state.step += 1
            hs.step()
            time.sleep(0.01)
        print("lr", hs.config.lr, "batch_size", hs.config.batch_size)
    """
)


@pytest.fixture
def live_run(tmp_path: Path) -> Iterator[Path]:
    """A training process that steps (and looks for edits) until the test ends."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    run_dir, stop = tmp_path / "run", tmp_path / "stop"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        store = CheckpointStore(run_dir)
        for _ in range(6000):  # its first checkpoint, which `set` checks against; 5 min at most
            if store.latest() is not None:
                break
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"the run ended early:\n{proc.stderr.read()}")
        else:
            raise AssertionError("the run wrote no checkpoint")
        yield run_dir
    finally:
        stop.touch()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err


def test_set_wait_prints_what_the_run_applied(live_run: Path) -> None:
    result = hs("set", str(live_run), "lr=0.05", "batch_size=64", "--wait", "120")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"requested: {live_run / 'edits'}/edit-")
    assert lines[1:] == ["applied: lr: 0.1 -> 0.05", "applied: batch_size: 32 -> 64"]


def test_set_wait_exits_1_when_the_run_rejects_the_edit(live_run: Path) -> None:
    # None passes the command's check (an Optional does not show in config.ron); the
    # run's config class says batch_size is an int.
    result = hs("set", str(live_run), "batch_size=None", "--wait")
    assert result.returncode == 1, result.stderr
    requested, rejected = result.stdout.splitlines()
    assert requested.startswith("requested: ") and rejected.startswith("rejected: ")
    assert "batch_size" in rejected and "expected int" in rejected


def test_set_wait_times_out_with_one_line_and_the_request_pending(
    run: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "idle"  # a run that no process runs
    shutil.copytree(run, copy)
    result = hs("set", str(copy), "batch_size=64", "--wait", "0.2")
    line = one_error_line(result, "set")
    assert "no answer from the run within 0.2 s; the request stays pending" in line
    (request,) = requests(copy)
    assert result.stdout == f"requested: {copy / 'edits' / request}\n"
    assert line.endswith(str(copy / "edits" / request))


def test_set_wait_refuses_a_negative_time(run: Path) -> None:
    line = one_error_line(hs("set", str(run), "batch_size=64", "--wait", "-1"), "set")
    assert "expected --wait SECONDS >= 0, found -1" in line
    assert requests(run) == []


# -- convert: torch.save files -----------------------------------------------------------

MODEL_RUN = textwrap.dedent(
    """
    import sys
    from dataclasses import dataclass, field

    import numpy as np
    import torch
    from torch import nn

    import hyperstate

    @dataclass
    class Config:
        lr: float = 0.01

    @dataclass
    class State:
        step: int = 0
        model: nn.Module = field(default_factory=lambda: nn.Linear(2, 3))
        optimizer: torch.optim.Optimizer | None = None
        mask: np.ndarray = field(default_factory=lambda: np.arange(3, dtype=np.float32))
        tied: torch.Tensor | None = None
        losses: list[float] = field(default_factory=list)

    def initial_state(config):
        torch.manual_seed(0)
        model = nn.Linear(2, 3)
        state = State(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=config.lr))
        state.tied = model.weight.t()  # a view of the weight
        return state

    with hyperstate.HyperState.load(Config, State, initial_state, None, sys.argv[1], "step") as hs:
        hs.state.model(torch.ones(4, 2)).sum().backward()
        hs.state.optimizer.step()
        hs.state.step += 1
        hs.state.losses.append(0.5)
        hs.step()
        torch.save(
            {"model": hs.state.model.state_dict(), "optimizer": hs.state.optimizer.state_dict()},
            sys.argv[2],
        )
    """
)


def test_convert_exports_a_torch_save_file_that_weights_only_loads(tmp_path: Path) -> None:
    import torch
    from torch import nn

    script = tmp_path / "train.py"
    script.write_text(MODEL_RUN)
    run_dir, reference = tmp_path / "run", tmp_path / "reference.pt"
    done = subprocess.run(
        [sys.executable, str(script), str(run_dir), str(reference)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out" / "state.pt"
    result = hs("convert", str(run_dir), str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote 10 tensors from {run_dir}/step-000000000001 to {out}")

    state = torch.load(out, weights_only=True)  # no pickle of anything but plain values
    expected = torch.load(reference, weights_only=True)
    assert sorted(state) == ["losses", "mask", "model", "optimizer", "step", "tied"]
    assert state["step"] == 1 and state["losses"] == [0.5]
    assert torch.equal(state["mask"], torch.arange(3, dtype=torch.float32))
    assert torch.equal(state["tied"], expected["model"]["weight"].t())
    model = nn.Linear(2, 3)
    model.load_state_dict(state["model"])  # a module's state is its state dict
    for name, value in expected["model"].items():
        assert torch.equal(model.state_dict()[name], value)
    optimizer = torch.optim.Adam(model.parameters())
    optimizer.load_state_dict(state["optimizer"])
    saved = optimizer.state_dict()
    assert saved["param_groups"][0]["lr"] == 0.01
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(saved["state"][0][key], expected["optimizer"]["state"][0][key])

    subtree = tmp_path / "model.pth"
    result = hs("convert", str(run_dir), str(subtree), "--select", "model")
    assert result.returncode == 0, result.stderr
    nn.Linear(2, 3).load_state_dict(torch.load(subtree, weights_only=True))


def test_convert_to_an_unknown_ending_lists_the_formats(run: Path, tmp_path: Path) -> None:
    for name in ("model.npz", "model"):
        line = one_error_line(hs("convert", str(run), str(tmp_path / name)), "convert")
        assert "expected a file name that says the format to write: .safetensors " in line
        assert "(safetensors); .pt, .pth, .bin, .ckpt (torch.save)" in line
        assert not (tmp_path / name).exists()


# -- diff: typed values ------------------------------------------------------------------


def test_diff_reads_an_optional_written_either_way_as_one_value(tmp_path: Path) -> None:
    (tmp_path / "a.ron").write_text("Config(dropout: Some(0.5), betas: (0.9, 0.99))\n")
    (tmp_path / "b.ron").write_text("Config(dropout: 0.5, betas: [0.9, 0.99])\n")
    result = hs("diff", str(tmp_path / "a.ron"), str(tmp_path / "b.ron"), "--exit-code")
    assert (result.returncode, result.stdout) == (0, "no differences\n")
    (tmp_path / "c.ron").write_text("Config(dropout: None, betas: [0.9, 0.99])\n")
    result = hs("diff", str(tmp_path / "a.ron"), str(tmp_path / "c.ron"), "--exit-code")
    assert (result.returncode, result.stdout) == (1, "~ dropout: 0.5 -> None\n1 difference\n")


def test_diff_shows_a_list_that_grew_as_added_items(tmp_path: Path) -> None:
    hyperstate.dump(Config(layers=[Layer(1), Layer(2)]), tmp_path / "a.ron")
    hyperstate.dump(Config(layers=[Layer(1), Layer(2), Layer(3)]), tmp_path / "b.ron")
    hyperstate.dump(Config(layers=[Layer(0), Layer(1), Layer(2)]), tmp_path / "front.ron")
    hyperstate.dump(Config(layers=[Layer(1), Layer(5)]), tmp_path / "changed.ron")

    def diff(b: str) -> str:
        result = hs("diff", str(tmp_path / "a.ron"), str(tmp_path / b))
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert diff("b.ron") == "+ layers[2]: Layer(width: 3)\n1 difference\n"
    assert diff("front.ron") == "+ layers[0]: Layer(width: 0)\n1 difference\n"
    assert diff("changed.ron") == "~ layers[1].width: 2 -> 5\n1 difference\n"
    back = hs("diff", str(tmp_path / "front.ron"), str(tmp_path / "a.ron"), "--json")
    assert json.loads(back.stdout)["differences"] == [
        {"path": "layers[0]", "change": "removed", "a": {"width": 0}}
    ]


def test_diff_compares_a_field_left_out_with_its_default(tmp_path: Path) -> None:
    hyperstate.dump(Config(batch_size=64), tmp_path / "full.ron")  # every field written
    (tmp_path / "short.ron").write_text("Config(batch_size: 64, optimizer: (lr: 0.2))\n")
    full, short = str(tmp_path / "full.ron"), str(tmp_path / "short.ron")

    # Without a schema the defaults are unknown: a field one side leaves out is + or -.
    plain = hs("diff", full, short).stdout.splitlines()
    assert "~ optimizer.lr: 0.1 -> 0.2" in plain
    assert "- optimizer.betas: (0.9, 0.99)" in plain and "- flag: false" in plain

    dump_schema(Config, tmp_path / "config-schema.ron")
    typed = hs("diff", full, short, "--schema", str(tmp_path / "config-schema.ron"))
    assert typed.stdout == "~ optimizer.lr: 0.1 -> 0.2\n1 difference\n"

    (tmp_path / "other.ron").write_text('Config(batch_size: 64, name: "x")\n')
    module = tmp_path / "life_config.py"
    module.write_text(
        "from dataclasses import dataclass\n\n\n@dataclass\nclass Config:\n"
        "    batch_size: int = 32\n    name: str = 'base'\n    flag: bool = False\n"
    )
    other = hs(
        "diff",
        str(tmp_path / "other.ron"),
        full,
        "--config-class",
        "life_config:Config",
        cwd=tmp_path,
    )
    lines = other.stdout.splitlines()
    assert '~ name: "x" -> "base"' in lines  # written in both: no default involved
    assert "- flag: false" not in lines and "+ flag: false" not in lines  # B writes the default
    # A field the class does not know has no default.
    assert "+ optimizer: Optim(lr: 0.1, betas: (0.9, 0.99))" in lines

    (tmp_path / "flag.ron").write_text("Config(flag: true)\n")
    args = [str(tmp_path / "flag.ron"), str(tmp_path / "other.ron")]
    text = hs("diff", *args, "--config-class", "life_config:Config", cwd=tmp_path).stdout
    assert "~ flag: true -> false (B leaves it out: its default)\n" in text
    assert "~ batch_size: 32 -> 64 (A leaves it out: its default)\n" in text
    result = hs(
        "diff",
        str(tmp_path / "flag.ron"),
        str(tmp_path / "other.ron"),
        "--config-class",
        "life_config:Config",
        "--json",
        cwd=tmp_path,
    )
    changes = {d["path"]: d for d in json.loads(result.stdout)["differences"]}
    assert changes["flag"] == {
        "path": "flag",
        "change": "changed",
        "a": True,
        "b": False,
        "default": "b",
    }
    assert changes["batch_size"]["default"] == "a"


# -- completion --------------------------------------------------------------------------


def test_bash_completion_script(tmp_path: Path) -> None:
    result = hs("completion", "bash")
    assert result.returncode == 0, result.stderr
    script = tmp_path / "hyperstate.bash"
    script.write_text(result.stdout)
    for command in ("ls", "show", "verify", "diff", "schedule", "convert", "set", "schema"):
        assert command in result.stdout
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    # What bash offers for `hyperstate s<TAB>`, `hyperstate set --<TAB>`, and paths: a run
    # directory for `ls`, a file or a directory for `show`.
    (tmp_path / "runs1").mkdir()
    (tmp_path / "runs2.ron").write_text("Config()\n")
    probe = (
        f"source {script}\n"
        "offer() { COMP_WORDS=($@); COMP_CWORD=$(($# - 1)); _shtab_hyperstate;"
        " echo ${COMPREPLY[@]}; }\n"
        "offer hyperstate s\noffer hyperstate set --\n"
        "offer hyperstate ls run\noffer hyperstate show run\n"
    )
    offered = subprocess.run(
        ["bash", "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert offered.returncode == 0, offered.stderr
    commands, options, directories, paths = offered.stdout.splitlines()
    assert sorted(commands.split()) == ["schedule", "schema", "set", "show"]
    assert {"--wait", "--no-check"} <= set(options.split())
    assert directories.split() == ["runs1"]
    assert sorted(paths.split()) == ["runs1", "runs2.ron"]


def test_zsh_completion_script_and_an_unknown_shell() -> None:
    result = hs("completion", "zsh")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#compdef hyperstate")
    assert "convert" in result.stdout
    bad = hs("completion", "fish")
    assert bad.returncode == 2 and "invalid choice: 'fish'" in bad.stderr


# -- run metadata ------------------------------------------------------------------------


def test_each_checkpoint_records_the_run(run: Path) -> None:
    info = CheckpointStore(run).latest()
    assert info is not None and info.manifest.run is not None
    meta = info.manifest.run
    assert meta.hyperstate == hyperstate.__version__
    assert meta.python == ".".join(map(str, sys.version_info[:3]))
    assert meta.world_size == 1 and meta.hosts == (socket.gethostname(),)
    assert meta.argv == tuple(sys.argv)  # written by this (pytest) process
    assert meta.wall_seconds is not None and meta.wall_seconds >= 0
    assert "run: Run(" in (Path(info.path) / COMMITTED).read_text()


def test_show_and_ls_long_print_the_run(run: Path) -> None:
    shown = hs("show", str(run))
    assert shown.returncode == 0, shown.stderr
    tail = shown.stdout.split(f"run ({run}/step-000000000001/{COMMITTED})\n")[1]
    assert f"  command: {shlex.join(sys.argv)}\n" in tail
    assert f"  ranks: 1 rank on {socket.gethostname()}\n" in tail
    assert f"  versions: hyperstate {hyperstate.__version__}, torch " in tail
    assert "  wall time: " in tail and " since the run started" in tail
    data = json.loads(hs("show", str(run), "--json").stdout)
    assert data["run"]["world_size"] == 1 and data["run"]["argv"] == sys.argv

    listed = hs("ls", str(run), "--long")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[1].startswith("1 ")
    assert lines[2].startswith("    command: ") and lines[3] == (
        f"    ranks: 1 rank on {socket.gethostname()}"
    )
    rows = json.loads(hs("ls", str(run), "-l", "--json").stdout)["checkpoints"]
    assert rows[0]["run"]["hosts"] == [socket.gethostname()]
    assert "run" not in json.loads(hs("ls", str(run), "--json").stdout)["checkpoints"][0]


def test_a_checkpoint_without_run_metadata_still_loads(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    marker = copy / "step-000000000001" / COMMITTED
    old = Manifest.loads(marker.read_text())
    marker.write_text(Manifest(old.number, old.files, old.created).dumps())  # as before
    assert "run:" not in marker.read_text()
    with hyperstate.HyperState.load(Config, State, lambda c: State(), None, copy, "step") as h:
        assert h.state.step == 1
    listed = hs("ls", str(copy), "--long")
    assert "    (no run metadata: an older checkpoint)" in listed.stdout.splitlines()
    shown = hs("show", str(copy / "step-000000000001"))
    assert shown.returncode == 0 and f"/{COMMITTED})" not in shown.stdout


def test_a_malformed_run_field_is_one_error_line(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ckpt"
    shutil.copytree(run / "step-000000000001", copy)
    marker = copy / COMMITTED
    marker.write_text(marker.read_text().replace("world_size: 1", 'world_size: "one"'))
    line = one_error_line(hs("show", str(copy)), "show")
    assert "run.world_size: expected an int in [1, 2**63), found 'one'" in line
    assert str(marker) in line


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


SAVE_TWICE = textwrap.dedent(
    """
    import sys
    from dataclasses import dataclass
    from pathlib import Path

    import hyperstate

    @dataclass
    class Config:
        lr: float = 0.1

    @dataclass
    class State:
        step: int = 0

    with hyperstate.HyperState.load(Config, State, lambda c: State(), None, sys.argv[1]) as hs:
        hs.state.step += 1
        hs.step()
        Path(__file__).with_name("notes.txt").write_text("changed\\n")  # dirty from now on
        hs.state.step += 1
        hs.step()
    """
)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_git_commit_of_the_script_is_recorded_once_per_process(tmp_path: Path) -> None:
    repo = tmp_path / "project"
    repo.mkdir()
    (repo / "train.py").write_text(SAVE_TWICE)
    (repo / "notes.txt").write_text("first\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "train.py", "notes.txt")
    _git(repo, "commit", "-q", "-m", "first")
    head = _git(repo, "rev-parse", "HEAD")

    def train(run_dir: Path) -> list[RunInfo]:
        done = subprocess.run(
            [sys.executable, str(repo / "train.py"), str(run_dir)],
            cwd=tmp_path,  # not the checkout: the script's own directory counts
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        infos = CheckpointStore(run_dir).list()
        return [i.manifest.run for i in sorted(infos, key=lambda i: i.number) if i.manifest.run]

    first, second = train(tmp_path / "run1")
    assert (first.git_commit, first.git_dirty) == (head, False)
    # git ran once, at the first save: the file changed since does not show.
    assert (second.git_commit, second.git_dirty) == (head, False)
    assert first.argv == (str(repo / "train.py"), str(tmp_path / "run1"))
    assert first.wall_seconds is not None and second.wall_seconds is not None
    assert second.wall_seconds >= first.wall_seconds

    again, _ = train(tmp_path / "run2")  # notes.txt is changed now: a dirty checkout
    assert (again.git_commit, again.git_dirty) == (head, True)

    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(repo / "train.py", outside / "train.py")
    done = subprocess.run(
        [sys.executable, str(outside / "train.py"), str(tmp_path / "run3")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    info = CheckpointStore(tmp_path / "run3").latest()
    assert info is not None and info.manifest.run is not None
    assert (info.manifest.run.git_commit, info.manifest.run.git_dirty) == ("unknown", None)


TWO_RANKS = textwrap.dedent(
    """
    import sys
    from dataclasses import dataclass

    import torch.distributed as dist

    import hyperstate

    @dataclass
    class Config:
        lr: float = 0.1

    @dataclass
    class State:
        step: int = 0

    dist.init_process_group("gloo")
    with hyperstate.HyperState.load(Config, State, lambda c: State(), None, sys.argv[1]) as hs:
        hs.state.step += 1
        hs.step()
    dist.destroy_process_group()
    """
)


def test_a_job_of_two_ranks_records_its_world_size_and_hosts(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(TWO_RANKS)
    ranks = launch(2, str(tmp_path / "run"), script=script)
    for rank in ranks:
        assert rank.returncode == 0, rank.stderr[-3000:]
    info = CheckpointStore(tmp_path / "run").latest()
    assert info is not None and info.manifest.run is not None
    assert info.manifest.run.world_size == 2
    assert info.manifest.run.hosts == (socket.gethostname(),)  # both ranks on this host
