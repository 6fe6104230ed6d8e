"""Every Python example in the README and docs/ runs, and prints what the page shows.

A page's ```python blocks run in order in one namespace, in a fresh temporary directory.
A plain ``` block right after a python block (with at most one short line of prose in
between, such as "prints") is the output that block must print. A block fenced as
```python file=NAME is a file of the reader's project: it is written to NAME (and is
importable by later blocks) instead of being run.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import linecache
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import hyperstate
import hyperstate.configs

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
# The modules that pages write as ```python file=NAME.py blocks and import.
PAGE_MODULES = ("config", "test_config", "train")
FENCE = re.compile(r"^ *```([^\n]*)\n(.*?)^ *```\n", re.M | re.S)


def _blocks(text: str) -> list[tuple[str, str | None, str | None]]:
    """(code, expected output or None, file name or None) for each python block."""
    matches = list(FENCE.finditer(text))
    result: list[tuple[str, str | None, str | None]] = []
    for i, m in enumerate(matches):
        info = m.group(1).split()
        if not info or info[0] != "python":
            continue
        filename = next((w[5:] for w in info[1:] if w.startswith("file=")), None)
        expected = None
        if i + 1 < len(matches) and matches[i + 1].group(1) == "":
            between = text[m.end() : matches[i + 1].start()].strip()
            if "\n" not in between and len(between) <= 20:
                expected = matches[i + 1].group(2)
        result.append((m.group(2), expected, filename))
    return result


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _blocks(page.read_text())
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType(f"docs_{page.stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look it up
    namespace = module.__dict__
    # The page's code as one virtual file, so that inspect.getsource (field docs for
    # --help) finds the classes the examples define.
    filename = f"<{page.name}>"
    module.__file__ = filename
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [n for n in sys.modules if n in PAGE_MODULES]:
        monkeypatch.delitem(sys.modules, name)  # the page's own config.py, not another's
    source = ""
    for number, (code, expected, file) in enumerate(blocks, 1):
        if file is not None:
            (tmp_path / file).write_text(code)
            continue
        offset = source.count("\n")
        source += code
        lines = source.splitlines(keepends=True)
        monkeypatch.setitem(linecache.cache, filename, (len(source), None, lines, filename))
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile("\n" * offset + code, filename, "exec"), namespace)
        finally:
            for name in PAGE_MODULES:
                sys.modules.pop(name, None)
        if expected is not None:
            assert out.getvalue() == expected, f"{page.name} block {number} printed otherwise"


def test_readme_schema_test_passes_in_a_user_project(tmp_path: Path) -> None:
    files = {f: code for code, _, f in _blocks((ROOT / "README.md").read_text()) if f}
    assert set(files) == {"config.py", "test_config.py"}
    for name, code in files.items():
        (tmp_path / name).write_text(code)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, check=False
        )

    assert run("config.py", "dump-schema").returncode == 0
    tested = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "test_config.py")
    assert tested.returncode == 0, tested.stdout
    assert "1 passed" in tested.stdout
    # And it fails once the class changes incompatibly, printing the report.
    config = files["config.py"].replace("batch_size: int", "batch_size: int\n    seed: int")
    (tmp_path / "config.py").write_text(config)
    tested = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "test_config.py")
    assert tested.returncode == 1
    assert "ERROR required field added without default: seed" in tested.stdout


def test_pages_have_examples() -> None:
    assert _blocks((ROOT / "README.md").read_text())
    assert _blocks((ROOT / "docs" / "configs.md").read_text())


@pytest.mark.parametrize("module", [hyperstate, hyperstate.configs])
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module, raise_on_error=False, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
