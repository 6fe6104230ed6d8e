"""A griffe extension for the API reference (mkdocs.yml loads it): docstrings as rendered.

hyperstate's docstrings are written to read well in ``help()`` and to run as doctests:
``>>>`` examples in the running text, reST roles such as :class:`Schedule`, and ``::``
before an indented literal block. Markdown knows none of these, so before griffe parses a
docstring this rewrites them: doctest runs become ``pycon`` code blocks, roles become
code spans, and ``::`` becomes ``:``. The docstrings themselves stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`~?([^`]+)`")
_FENCE = "```"
_PARAM = re.compile(r":param (\w+):\s*(.*)")


def _roles(line: str) -> str:
    return _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", line)


def _rewrite(text: str) -> str:
    out: list[str] = []
    in_fence = in_doctest = in_params = False
    indent = 0
    for line in text.split("\n"):
        stripped = line.lstrip()
        param = _PARAM.fullmatch(stripped)
        if param is not None and not in_fence and not in_doctest:
            if not in_params:
                out.append(" " * (len(line) - len(stripped)) + "Args:")
                in_params = True
            out.append(f"    {param.group(1)}: {_roles(param.group(2))}")
            continue
        if in_params and stripped and line[0].isspace():
            out.append(f"        {_roles(stripped)}")  # a field's continuation line
            continue
        in_params = False
        if stripped.startswith(_FENCE):
            in_fence = not in_fence
        elif in_doctest and not stripped:
            out.append(" " * indent + _FENCE)
            in_doctest = False
        elif not in_fence and not in_doctest and stripped.startswith(">>>"):
            indent = len(line) - len(stripped)
            out.append(" " * indent + _FENCE + "pycon")
            in_doctest = True
        if not in_fence and not in_doctest:
            line = _roles(line)
            if line.endswith("::") and not line.endswith(":::"):
                line = line[:-1]
        out.append(line)
    if in_doctest:
        out.append(" " * indent + _FENCE)
    return "\n".join(out)


class DocstringsAsMarkdown(griffe.Extension):
    """Rewrites every docstring as it is loaded (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _rewrite(obj.docstring.value)
