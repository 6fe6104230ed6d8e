"""Field documentation read from the source of config classes.

A field's doc is, in order of preference: ``field(metadata={"help": ...})``, an attribute
docstring (a string literal on the line after the field), a trailing ``# comment`` on the
field's line, or ``#`` comment lines right above it. Used by ``--help`` and schema files.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap

__all__ = ["field_docs"]


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The doc of every documented field of dataclass ``cls`` (inherited ones included)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_docs_from_source(klass))
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help") or f.metadata.get("doc")
        if isinstance(help_text, str):
            docs[f.name] = help_text
    return docs


def _docs_from_source(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    if not tree.body or not isinstance(tree.body[0], ast.ClassDef):
        return {}
    lines = source.splitlines()
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for i, stmt in enumerate(body):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        name = stmt.target.id
        after = body[i + 1] if i + 1 < len(body) else None
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[name] = inspect.cleandoc(after.value.value)
            continue
        end_line = lines[(stmt.end_lineno or stmt.lineno) - 1]
        trailing = _trailing_comment(end_line)
        if trailing:
            docs[name] = trailing
            continue
        above: list[str] = []
        j = stmt.lineno - 2
        while j >= 0 and lines[j].strip().startswith("#"):
            above.append(lines[j].strip().lstrip("#:").strip())
            j -= 1
        if above:
            docs[name] = " ".join(reversed(above))
    return docs


def _trailing_comment(line: str) -> str | None:
    # A '#' outside string literals: scan with a tiny quote tracker.
    quote: str | None = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            return line[i + 1 :].strip() or None
        i += 1
    return None
