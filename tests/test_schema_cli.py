"""The schema evolution CLI, run as a subprocess the way a user runs it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HYPERSTATE = str(Path(sys.executable).with_name("hyperstate"))

V0 = """
from dataclasses import dataclass
from hyperstate import Versioned, schema_evolution_cli


@dataclass
class Config(Versioned):
    lr: float = 0.1
    batch_size: int = 32

    @classmethod
    def version(cls) -> int:
        return 0


if __name__ == "__main__":
    schema_evolution_cli(Config)
"""

# lr renamed, version not bumped yet: what a user has after a refactoring.
V0_RENAMED = V0.replace("    lr: float = 0.1", "    learning_rate: float = 0.1")

V1 = """
from dataclasses import dataclass
from hyperstate import Versioned, schema_evolution_cli
from hyperstate.schema.rewrite_rule import RenameField


@dataclass
class Config(Versioned):
    learning_rate: float = 0.1
    batch_size: int = 32

    @classmethod
    def version(cls) -> int:
        return 1

    @classmethod
    def upgrade_rules(cls):
        return {0: [RenameField(old_field=("lr",), new_field=("learning_rate",))]}


if __name__ == "__main__":
    schema_evolution_cli(Config)
"""


def run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "config.py", *args],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "config.py").write_text(V0)
    return tmp_path


def test_plain_invocation_lists_the_commands(project: Path) -> None:
    result = run(project)
    assert result.returncode == 0
    for command in ("dump-schema", "check-schema", "upgrade-schema", "upgrade-config"):
        assert command in result.stdout


def test_the_full_loop_of_a_rename(project: Path) -> None:
    assert run(project, "dump-schema").returncode == 0
    schema = (project / "config-schema.ron").read_text()
    assert 'root: "Config"' in schema and 'name: "lr"' in schema

    assert run(project, "check-schema").returncode == 0

    (project / "config.py").write_text(V0_RENAMED)
    checked = run(project, "check-schema")
    assert checked.returncode == 1
    assert checked.stdout.endswith(
        textwrap.dedent(
            """\
            WARN  field renamed to learning_rate: lr
            WARN  schema changed but version identical
            Schema incompatible

            Proposed mitigations
            - add upgrade rules:
                0: [
                    RenameField(old_field=('lr',), new_field=('learning_rate',)),
                ],
            - bump version to 1
            """
        )
    )
    assert "\033[" not in checked.stdout  # no colour when not on a terminal

    # upgrade-schema refuses while the change is unhandled, and leaves the file alone.
    assert run(project, "upgrade-schema").returncode == 1
    assert (project / "config-schema.ron").read_text() == schema

    (project / "config.py").write_text(V1)
    fixed = run(project, "check-schema")
    assert fixed.returncode == 0, fixed.stdout
    assert "INFO  field renamed to learning_rate: lr (handled by upgrade rules)" in fixed.stdout
    assert "Schema compatible" in fixed.stdout

    upgraded = run(project, "upgrade-schema")
    assert upgraded.returncode == 0
    assert "updated config-schema.ron" in upgraded.stdout
    new_schema = (project / "config-schema.ron").read_text()
    assert 'name: "learning_rate"' in new_schema and "version: 1," in new_schema
    assert run(project, "check-schema").stdout.strip() == "Schema compatible"


def test_upgrade_config_rewrites_old_files_and_never_loses_one(project: Path) -> None:
    (project / "config.py").write_text(V1)
    old = project / "old.ron"
    old.write_text("// written by version 0\nConfig(\n    lr: 0.5,\n)\n")
    bad = project / "bad.ron"
    bad_text = 'Config(\n    lr: "fast",\n)\n'
    bad.write_text(bad_text)
    checkpoint = project / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.ron").write_text("Config(lr: 0.25, batch_size: 8)\n")

    dry = run(project, "upgrade-config", "--dry-run", str(old))
    assert dry.returncode == 0
    assert "-    lr: 0.5," in dry.stdout and "+    learning_rate: 0.5," in dry.stdout
    assert old.read_text().startswith("// written by version 0")

    result = run(project, "upgrade-config", str(old), str(bad), str(checkpoint))
    assert result.returncode == 1
    assert old.read_text() == (
        "Config(\n    version: 1,\n    learning_rate: 0.5,\n    batch_size: 32,\n)\n"
    )
    assert "learning_rate: 0.25" in (checkpoint / "config.ron").read_text()
    assert bad.read_text() == bad_text  # byte for byte
    assert f"FAILED {bad}: " in result.stdout
    assert 'expected float, found "fast" at learning_rate' in result.stdout
    assert f"{bad} was left unchanged" in result.stdout

    again = run(project, "upgrade-config", str(old))
    assert again.returncode == 0 and f"up to date: {old}" in again.stdout


def test_file_newer_than_code_is_refused(project: Path) -> None:
    newer = project / "newer.ron"
    newer.write_text("Config(version: 3, lr: 0.1)\n")
    result = run(project, "upgrade-config", str(newer))
    assert result.returncode == 1
    assert "Config version 3 was written by newer code" in result.stdout
    assert newer.read_text() == "Config(version: 3, lr: 0.1)\n"


def test_missing_schema_file_is_a_clear_error(project: Path) -> None:
    result = run(project, "check-schema", "--schema", "nope.ron")
    assert result.returncode == 2
    assert "no schema file at nope.ron; create it with dump-schema" in result.stderr


def test_hyperstate_schema_with_config_class(project: Path) -> None:
    def hs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [HYPERSTATE, "schema", *args], cwd=project, capture_output=True, text=True, check=False
        )

    dumped = hs("--config-class", "config:Config", "dump-schema", "--schema", "s.ron")
    assert dumped.returncode == 0, dumped.stderr
    assert (project / "s.ron").exists()
    (project / "config.py").write_text(V0_RENAMED)
    checked = hs("--config-class", "config:Config", "check-schema", "--schema", "s.ron")
    assert checked.returncode == 1
    assert "WARN  field renamed to learning_rate: lr" in checked.stdout
    bad = hs("--config-class", "config", "check-schema")
    assert bad.returncode == 2
    assert "expected MODULE:CLASS (e.g. config:Config), found 'config'" in bad.stderr
