"""The layers of docs/architecture.md stay true: no upward import, no import cycle, and no
module setting another module's attributes at import time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hyperstate

PACKAGE = Path(hyperstate.__file__).parent

# Each module (or package prefix) and its layer, lowest first; a module may import only
# from its own layer or a lower one. The package's own __init__ is its public face and
# may import anything.
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["hyperstate.errors", "hyperstate._fs", "hyperstate._signals", "hyperstate._gc"]),
    ("text", ["hyperstate.ron"]),
    ("types", ["hyperstate.typeinfo"]),
    ("serde", ["hyperstate.serde", "hyperstate.overrides"]),
    ("schema", ["hyperstate.schema"]),
    ("schedules", ["hyperstate.schedule", "hyperstate.scheduled"]),
    ("tensors", ["hyperstate.tensors"]),
    ("storage", ["hyperstate.storage"]),
    ("distributed", ["hyperstate.distributed"]),
    (
        "manager",
        ["hyperstate.manager", "hyperstate.configs", "hyperstate.edits", "hyperstate.args"],
    ),
    ("tools", ["hyperstate.tools"]),
    ("integrations", ["hyperstate.integrations"]),
]


def module_name(file: Path) -> str:
    parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS: add it")


MODULES = {module_name(f): f for f in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str) -> set[str]:
    """Every hyperstate module ``module`` imports, at the top or inside functions."""
    file = MODULES[module]
    tree = ast.parse(file.read_text())
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for name in names:
            # The deepest module the name refers to (a module, or the one defining it).
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                found.add(name)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        if module != "hyperstate":
            layer_of(module)


def upward(module: str, graph: dict[str, set[str]]) -> list[str]:
    """The modules ``module`` imports from a higher layer."""
    mine = layer_of(module)
    return sorted(m for m in graph[module] if m != "hyperstate" and layer_of(m) > mine)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "hyperstate"))
def test_no_upward_import(module: str) -> None:
    mine = layer_of(module)
    found = upward(module, GRAPH)
    assert not found, f"{module} ({LAYERS[mine][0]}) imports from a higher layer: " + ", ".join(
        f"{m} ({LAYERS[layer_of(m)][0]})" for m in found
    )


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_sets_another_at_import_time(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text())
    imported = {
        alias.asname or alias.name.split(".")[0]
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            assert not (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id in imported
            ), f"{module}:{node.lineno} sets {ast.unparse(target)} at import time"
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            func = node.value.func
            mutates = isinstance(func, ast.Attribute) and func.attr in (
                "append",
                "extend",
                "update",
                "setdefault",
            )
            assert not mutates, f"{module}:{node.lineno} mutates another module at import time"


def test_the_one_registration_is_in_the_package_face() -> None:
    calls = [
        (module, node.lineno)
        for module, file in MODULES.items()
        for node in ast.parse(file.read_text()).body
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr == "register"
    ]
    assert {module for module, _ in calls} == {"hyperstate"}, calls


def test_the_check_sees_imports_inside_functions_and_refuses_upward_ones() -> None:
    # storage really imports the tensor codec (a lower layer), inside the module body...
    assert "hyperstate.tensors.codec" in GRAPH["hyperstate.storage"]
    # ...the CLI imports storage inside its functions, and that is seen too...
    assert "hyperstate.storage" in GRAPH["hyperstate.tools.cli"]
    # ...and an import of the manager by storage would be refused.
    assert upward("hyperstate.storage", {"hyperstate.storage": {"hyperstate.manager"}}) == [
        "hyperstate.manager"
    ]
