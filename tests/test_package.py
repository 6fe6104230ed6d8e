"""The package as users meet it: import cost, console script, the demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hyperstate

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, cwd=ROOT)


def test_import_does_not_import_torch() -> None:
    code = (
        "import sys, hyperstate; "
        "print(sorted(m for m in ('torch', 'numpy', 'fsspec') if m in sys.modules))"
    )
    assert run(sys.executable, "-c", code).stdout.strip() == "[]"


def test_console_script_version_and_help() -> None:
    exe = Path(sys.executable).with_name("hyperstate")
    version = run(str(exe), "--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"hyperstate {hyperstate.__version__}"
    helped = run(str(exe), "--help")
    assert helped.returncode == 0 and "usage: hyperstate" in helped.stdout


def test_public_api_is_listed() -> None:
    for name in hyperstate.__all__:
        assert hasattr(hyperstate, name), name


def test_quickstart_demo_runs_with_overrides() -> None:
    result = run(
        sys.executable, "examples/quickstart.py", "optimizer.lr=0.01", "layers[1].width=64"
    )
    assert result.returncode == 0, result.stderr
    assert "lr: 0.01," in result.stdout
    assert "width: 64," in result.stdout
    assert "Round trip through config.ron: ok" in result.stdout


def test_quickstart_demo_reports_bad_override() -> None:
    result = run(sys.executable, "examples/quickstart.py", "optimizer.lrr=0.01")
    assert result.returncode == 2
    assert "did you mean 'lr'?" in result.stderr
