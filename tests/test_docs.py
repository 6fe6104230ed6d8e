"""Every Python example in the README and docs/ runs, and prints what the page shows.

A page's ```python blocks run in order in one namespace, in a fresh temporary directory.
A plain ``` block right after a python block (with at most one short line of prose in
between, such as "prints") is the output that block must print.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import linecache
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import hyperstate
import hyperstate.configs

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```\n", re.M | re.S)


def _blocks(text: str) -> list[tuple[str, str | None]]:
    """(code, expected output or None) for each python block of a page."""
    matches = list(FENCE.finditer(text))
    result: list[tuple[str, str | None]] = []
    for i, m in enumerate(matches):
        if m.group(1) != "python":
            continue
        expected = None
        if i + 1 < len(matches) and matches[i + 1].group(1) == "":
            between = text[m.end() : matches[i + 1].start()].strip()
            if "\n" not in between and len(between) <= 20:
                expected = matches[i + 1].group(2)
        result.append((m.group(2), expected))
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
    source = ""
    for number, (code, expected) in enumerate(blocks, 1):
        offset = source.count("\n")
        source += code
        lines = source.splitlines(keepends=True)
        monkeypatch.setitem(linecache.cache, filename, (len(source), None, lines, filename))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile("\n" * offset + code, filename, "exec"), namespace)
        if expected is not None:
            assert out.getvalue() == expected, f"{page.name} block {number} printed otherwise"


def test_pages_have_examples() -> None:
    assert _blocks((ROOT / "README.md").read_text())
    assert _blocks((ROOT / "docs" / "configs.md").read_text())


@pytest.mark.parametrize("module", [hyperstate, hyperstate.configs])
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module, raise_on_error=False, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
