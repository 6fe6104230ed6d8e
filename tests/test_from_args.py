"""``HyperState.from_args``: a training script started from the command line, run as a
user runs it (a script file, a subprocess), and ``upgrade-config`` of a run directory."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import pytest
import torch

import hyperstate
from hyperstate.storage import CheckpointStore

TIMEOUT = 300  # generous: only a hang would reach it

TRAIN = '''
import argparse
import json
from dataclasses import dataclass, field
from enum import Enum

import hyperstate


class Activation(Enum):
    RELU = "relu"
    GELU = "gelu"
    TANH = "tanh"


@dataclass
class OptimizerConfig:
    lr: float = 0.01
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.98)


@dataclass
class Config:
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    activation: Activation = Activation.RELU
    steps: int = 3


@dataclass
class State:
    step: int = 0
    total: float = 0.0


parser = argparse.ArgumentParser(description="Train a toy model.")
parser.add_argument("--my-flag", type=int, default=1, metavar="N", help="a flag of the script")

hs = hyperstate.HyperState.from_args(
    Config, State, lambda config: State(), parser=parser, checkpoint_key="step"
)
with hs:
    while hs.state.step < hs.config.steps:
        hs.state.step += 1
        hs.state.total += hs.config.optimizer.lr * hs.args.my_flag
        hs.step()
print(json.dumps({
    "lr": hs.config.optimizer.lr,
    "activation": hs.config.activation.name,
    "steps": hs.config.steps,
    "my_flag": hs.args.my_flag,
    "step": hs.state.step,
    "total": hs.state.total,
    "resumed_from": hs.resumed_from.path if hs.resumed_from else None,
}))
'''


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(TRAIN)
    return path


def run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "COLUMNS": "100"},  # argparse wraps the usage to the terminal
        check=False,
    )


def train(script: Path, *args: str) -> dict[str, object]:
    result = run(script, *args)
    assert result.returncode == 0, result.stderr
    summary: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return summary


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines of stderr that report an error (argparse prints the usage above them)."""
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if ": error: " in line]


def test_help_lists_options_enum_variants_and_the_config_file_values(script: Path) -> None:
    helped = run(script, "--help")
    assert helped.returncode == 0, helped.stderr
    out = helped.stdout
    assert out.startswith("usage: train.py [-h] [--my-flag N] [--config PATH]")
    assert "Train a toy model." in out  # the script's description
    assert "--my-flag N " in out and "a flag of the script" in out
    assert "--checkpoint-dir URL " in out and "--print-config " in out
    assert "\nfields:\n" in out
    assert "  optimizer.lr: float = 0.01\n      Peak learning rate.\n" in out
    assert "  activation: Activation = RELU  {RELU, GELU, TANH}\n" in out
    assert "  steps: int = 3\n" in out

    config = script.parent / "c.ron"
    config.write_text("Config(optimizer: (lr: 0.25), activation: GELU)\n")
    # --config after --help counts too: the help waits for every argument.
    from_file = run(script, "--help", "--config", "c.ron").stdout
    assert "\nfields (values from c.ron):\n" in from_file
    assert "  optimizer.lr: float = 0.25\n" in from_file
    assert "  activation: Activation = GELU  {RELU, GELU, TANH}\n" in from_file
    assert "  steps: int = 3\n" in from_file  # not in the file: the class default


def test_config_overrides_and_the_scripts_flags_then_resume(script: Path) -> None:
    (script.parent / "c.ron").write_text("Config(optimizer: (lr: 0.25), steps: 2)\n")
    first = train(
        script, "--config", "c.ron", "--checkpoint-dir", "run", "optimizer.lr=0.1", "--my-flag", "3"
    )
    assert first == {
        "lr": 0.1,
        "activation": "RELU",
        "steps": 2,
        "my_flag": 3,
        "step": 2,
        "total": pytest.approx(0.6),
        "resumed_from": None,
    }
    run_dir = script.parent / "run"
    assert [info.number for info in CheckpointStore(str(run_dir)).list()] == [1, 2]
    assert "lr: 0.1," in (run_dir / "step-000000000002" / "config.ron").read_text()

    # Overrides are not passed twice: the newest checkpoint has the config, these add to it.
    again = train(script, "--checkpoint-dir", "run", "steps=4", "activation=TANH")
    assert again["resumed_from"] == "run/step-000000000002"
    assert (again["lr"], again["activation"], again["steps"]) == (0.1, "TANH", 4)
    assert again["step"] == 4 and again["total"] == pytest.approx(0.6 + 2 * 0.1)


def test_print_config_prints_what_the_run_would_start_with(script: Path) -> None:
    (script.parent / "c.ron").write_text("Config(optimizer: (lr: 0.25))\n")
    printed = run(script, "--config", "c.ron", "--print-config", "steps=9")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == textwrap.dedent(
        """\
        Config(
            optimizer: OptimizerConfig(
                lr: 0.25,
                betas: (0.9, 0.98),
            ),
            activation: RELU,
            steps: 9,
        )
        """
    )
    # The printed text is a config file that gives the same run.
    (script.parent / "printed.ron").write_text(printed.stdout)
    assert train(script, "--config", "printed.ron")["steps"] == 9

    train(script, "--checkpoint-dir", "run", "optimizer.lr=0.5")
    resumed = run(script, "--checkpoint-dir", "run", "--print-config")
    assert "lr: 0.5," in resumed.stdout and "steps: 3," in resumed.stdout
    store = CheckpointStore(str(script.parent / "run"))
    assert [info.number for info in store.list()] == [1, 2, 3]  # nothing ran


def test_a_run_directory_as_config(script: Path) -> None:
    train(script, "--checkpoint-dir", "old", "optimizer.lr=0.5", "activation=GELU")
    # As its newest committed checkpoint's directory: config and state from there.
    started = train(script, "--config", "old", "--checkpoint-dir", "new", "steps=5")
    assert started["resumed_from"] == "old/step-000000000003"
    assert (started["lr"], started["activation"], started["steps"]) == (0.5, "GELU", 5)
    assert started["step"] == 5
    assert [i.number for i in CheckpointStore(str(script.parent / "new")).list()] == [4, 5]
    assert [i.number for i in CheckpointStore(str(script.parent / "old")).list()] == [1, 2, 3]

    helped = run(script, "--config", "old", "--help").stdout
    assert "fields (values from old/step-000000000003/config.ron):" in helped
    assert "  activation: Activation = GELU  {RELU, GELU, TANH}\n" in helped

    config = hyperstate.from_args(_Config, ["--config", str(script.parent / "new")])
    assert config == _Config(_Optimizer(lr=0.5), _Activation.GELU, steps=5)


class _Activation(Enum):
    RELU = "relu"
    GELU = "gelu"
    TANH = "tanh"


@dataclass
class _Optimizer:
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)


@dataclass
class _Config:
    """The script's config, for reading its files here (its classes live in the script)."""

    optimizer: _Optimizer = field(default_factory=_Optimizer)
    activation: _Activation = _Activation.RELU
    steps: int = 3


def test_bad_input_exits_2_with_one_line(script: Path) -> None:
    bad = run(script, "optimizer.lrr=1", "steps=many")
    assert bad.returncode == 2 and bad.stdout == ""
    assert error_lines(bad) == [
        "train.py: error: unknown field 'lrr' in OptimizerConfig at optimizer.lrr (from "
        "override 'optimizer.lrr=1'); did you mean 'lr'?; expected int, found identifier "
        "many at steps (from override 'steps=many')"
    ]
    assert bad.stderr.startswith("usage: train.py")

    (script.parent / "broken.ron").write_text("Config(\n    steps: 10\n")
    broken = run(script, "--config", "broken.ron")
    assert broken.returncode == 2
    [line] = error_lines(broken)
    assert line.startswith("train.py: error: broken.ron:3:1: expected ',' or ')'")

    missing = run(script, "--config", "nope.ron")
    assert missing.returncode == 2
    assert error_lines(missing) == [
        "train.py: error: read config nope.ron: no such file or directory: expected a "
        "config file, a checkpoint directory or a run directory"
    ]
    (script.parent / "empty").mkdir()
    empty = run(script, "--config", "empty", "--print-config")
    assert empty.returncode == 2
    [line] = error_lines(empty)
    assert "found a directory without one" in line

    flag = run(script, "--my-flag", "x")
    assert flag.returncode == 2
    assert error_lines(flag) == ["train.py: error: argument --my-flag: invalid int value: 'x'"]
    assert not (script.parent / "run").exists()


# -- the parser, in process -----------------------------------------------------------------


@dataclass
class Small:
    lr: float = 0.1
    steps: int = 3


@dataclass
class Count:
    step: int = 0


def test_help_works_without_a_required_option_and_the_scripts_parser_is_unchanged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="train.py")
    parser.add_argument("--data", required=True)
    parser.add_argument("-c", "--count", type=int, default=0)  # takes -c from hyperstate
    before = parser.format_help()
    with pytest.raises(SystemExit) as info:
        hyperstate.HyperState.from_args(Small, Count, lambda c: Count(), ["--help"], parser=parser)
    assert info.value.code == 0
    assert "  steps: int = 3\n" in capsys.readouterr().out
    hs = hyperstate.HyperState.from_args(
        Small,
        Count,
        lambda c: Count(),
        ["lr=0.3", "--data", "x", "-c", "4", "--hps", "steps=7"],
        parser=parser,
    )
    assert hs.config == Small(lr=0.3, steps=7)
    assert vars(hs.args) == {"data": "x", "count": 4}
    assert parser.format_help() == before
    assert vars(parser.parse_args(["--data", "y"])) == {"data": "y", "count": 0}

    clashing = argparse.ArgumentParser()
    clashing.add_argument("--config")
    with pytest.raises(ValueError, match="the script's parser defines --config"):
        hyperstate.HyperState.from_args(Small, Count, lambda c: Count(), [], parser=clashing)


def test_keyword_defaults_and_the_command_line_on_top(tmp_path: Path) -> None:
    hs = hyperstate.HyperState.from_args(
        Small,
        Count,
        lambda c: Count(),
        ["steps=5"],
        checkpoint_dir=tmp_path / "run",
        overrides=["lr=0.2", "steps=4"],
        checkpoint_key="step",
    )
    assert hs.config == Small(lr=0.2, steps=5)
    assert hs.store is not None and hs.store.url == str(tmp_path / "run")
    assert vars(hs.args) == {}
    hs.close()


def test_a_corrupt_checkpoint_named_as_path_is_an_error_not_a_retry(tmp_path: Path) -> None:
    # Resume skips a corrupt checkpoint and tries the one before; a checkpoint named as
    # `path` has no "before", and used to be retried for ever.
    code = textwrap.dedent(
        """
        import sys
        from dataclasses import dataclass, field
        import torch
        import hyperstate

        @dataclass
        class State:
            step: int = 0
            w: torch.Tensor = field(default_factory=lambda: torch.zeros(4))

        @dataclass
        class Config:
            lr: float = 0.1
            steps: int = 3

        try:
            hyperstate.HyperState(Config, State, lambda c: State(), sys.argv[1])
        except hyperstate.StorageError as e:
            print(e)
        """
    )
    hs = hyperstate.HyperState(Small, _TensorState, lambda c: _TensorState(), None, tmp_path)
    hs.state.w += 1
    hs.step()
    hs.close()
    checkpoint = tmp_path / "step-000000000001"
    blob = checkpoint / "blobs" / "rank-00000.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    for path in (checkpoint, tmp_path):  # named itself, or as its run's newest
        result = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"restore {checkpoint}: the checkpoint failed verification")
        assert "expected checksum" in result.stdout


@dataclass
class _TensorState:
    w: torch.Tensor = field(default_factory=lambda: torch.zeros(4))


# -- upgrade-config of a run directory --------------------------------------------------------

V1 = """
from dataclasses import dataclass, field
from enum import Enum
from hyperstate import Versioned, schema_evolution_cli
from hyperstate.schema.rewrite_rule import RenameField


@dataclass
class Config(Versioned):
    learning_rate: float = 0.1

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls):
        return {0: [RenameField(old_field=("lr",), new_field=("learning_rate",))]}


if __name__ == "__main__":
    schema_evolution_cli(Config)
"""


def test_upgrade_config_of_a_run_directory_upgrades_every_committed_checkpoint(
    tmp_path: Path,
) -> None:
    hs = hyperstate.HyperState(Small, Count, lambda c: Count(), None, tmp_path / "run")
    for _ in range(2):
        hs.step()
    hs.close()
    run_dir = tmp_path / "run"
    committed = [run_dir / f"step-00000000000{n}" / "config.ron" for n in (1, 2)]
    for n, config in enumerate(committed):
        config.write_text(f"Config(\n    lr: 0.{n + 1},\n)\n")  # as version 0 wrote them
    crashed = run_dir / "step-000000000003"
    crashed.mkdir()
    (crashed / "config.ron").write_text("Config(lr: 0.9)\n")  # a save in progress, maybe
    (tmp_path / "config.py").write_text(V1)

    result = subprocess.run(
        [sys.executable, "config.py", "upgrade-config", "run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "skipped 1 uncommitted checkpoint(s) in run",
        "upgraded run/step-000000000001/config.ron",
        "upgraded run/step-000000000002/config.ron",
    ]
    for n, config in enumerate(committed):
        assert config.read_text() == f"Config(\n    version: 1,\n    learning_rate: 0.{n + 1},\n)\n"
    assert (crashed / "config.ron").read_text() == "Config(lr: 0.9)\n"
