"""Schedules in configs: which fields hold one, their values now, and their text on dump.

A float or int field may hold a schedule string (``"step: 3e-4@0 cos 0@100000"``, see
:mod:`hyperstate.schedule`). Loading puts the schedule's first value in the field and
remembers the schedule on the config object; :func:`update_schedules` sets every
scheduled field to its value at the current state (the manager calls it at each
``step()``); dumping writes the schedule text back, unchanged.

>>> from dataclasses import dataclass
>>> import hyperstate
>>> @dataclass
... class Config:
...     lr: float = 0.1
>>> @dataclass
... class State:
...     step: int = 0
>>> config = hyperstate.loads(Config, 'Config(lr: "step: 1.0@0 lin 0.0@100")')
>>> config.lr
1.0
>>> update_schedules(config, State(step=25))
{('lr',): 0.75}
>>> print(hyperstate.dumps(config))
Config(
    lr: "step: 1.0@0 lin 0.0@100",
)
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hyperstate import schedule as _schedule
from hyperstate.errors import ConfigError, Issue, PathSegment, ValuePath, format_path
from hyperstate.ron import Ident, Struct

__all__ = [
    "ParamGroupBinding",
    "check_schedule_fields",
    "parse",
    "schedules",
    "set_schedules",
    "update_schedules",
    "with_schedule_text",
]

_ATTR = "__hyperstate_schedules__"


def parse(text: str) -> _schedule.Schedule | None:
    """The schedule that a string in a number field holds, or None when it holds none.

    This is what the config loader passes to :func:`hyperstate.serde.from_value` and the
    overrides, so that number fields accept schedules.

    Raises:
        ScheduleError: the text looks like a schedule but is malformed.
    """
    if not _schedule.looks_like_schedule(text):
        return None
    return _schedule.parse(text)


def schedules(config: Any) -> dict[ValuePath, _schedule.Schedule]:
    """The schedules of a loaded config, by field path (empty when it has none)."""
    found: dict[ValuePath, _schedule.Schedule] = getattr(config, _ATTR, {})
    return dict(found)


def set_schedules(config: Any, found: Mapping[ValuePath, _schedule.Schedule]) -> None:
    """Remember ``found`` on ``config`` (replacing what it had)."""
    try:
        object.__setattr__(config, _ATTR, dict(found))
    except AttributeError:
        raise TypeError(
            f"{type(config).__name__} uses __slots__ without room for hyperstate's schedule "
            f"record; drop slots=True to use schedules in it"
        ) from None


def update_schedules(config: Any, state: Any) -> dict[ValuePath, float | int]:
    """Set every scheduled field of ``config`` to its value at ``state``; return the values.

    Raises:
        ConfigError: a schedule's ``x`` names no numeric field of ``state``.
    """
    values: dict[ValuePath, float | int] = {}
    for where, sched in schedules(config).items():
        x = _read_x(state, sched, where)
        current = _get(config, where)
        value = sched.value_at(x, as_int=type(current) is int)
        _set(config, where, value)
        values[where] = value
    return values


_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[[0-9]+\])*)")


@dataclass(frozen=True)
class ParamGroupBinding:
    """Keeps ``key`` of every param group of ``optimizer`` equal to the number at ``where``
    in the config (see :meth:`hyperstate.StateManager.bind_param_groups`).

    ``optimizer`` is anything with ``param_groups`` (a list of dicts), as a
    ``torch.optim.Optimizer`` has.
    """

    where: ValuePath
    optimizer: Any
    key: str

    @classmethod
    def of(
        cls, config: Any, field: str, optimizer: Any, key: str | None = None
    ) -> ParamGroupBinding:
        """A binding of the dotted config ``field`` (``"optimizer.lr"``,
        ``"groups[1].lr"``); ``key`` defaults to the field's last name.

        Raises:
            ConfigError: ``field`` names no number of ``config``, or ``optimizer`` has no
                param groups.
        """
        where: list[PathSegment] = []
        for part in field.split("."):
            m = _SEGMENT.fullmatch(part)
            if m is None:
                issue = Issue(
                    (), f"expected a dotted config field such as 'optimizer.lr', found {field!r}"
                )
                raise ConfigError([issue])
            where.append(m[1])
            where.extend(int(i) for i in re.findall(r"[0-9]+", m[2]))
        path = tuple(where)
        try:
            value = _get(config, path)
        except (AttributeError, KeyError, IndexError, TypeError):
            raise ConfigError([Issue(path, "expected a config field, found none")]) from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            found = type(value).__name__
            raise ConfigError([Issue(path, f"expected a number to bind, found a {found}")])
        groups = getattr(optimizer, "param_groups", None)
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            found = type(optimizer).__name__
            raise ConfigError(
                [Issue(path, f"expected an optimizer with param_groups to bind to, found {found}")]
            )
        name = key if key is not None else next(s for s in reversed(path) if isinstance(s, str))
        return cls(path, optimizer, name)

    def apply(self, config: Any) -> None:
        """Set ``key`` of every param group to the config's value now."""
        value = _get(config, self.where)
        for group in self.optimizer.param_groups:
            group[self.key] = value


def check_schedule_fields(config: Any, state: Any) -> None:
    """Raise a ``ConfigError`` naming every schedule whose ``x`` is not a state field."""
    issues: list[Issue] = []
    for where, sched in schedules(config).items():
        try:
            _read_x(state, sched, where)
        except ConfigError as e:
            issues.extend(e.issues)
    if issues:
        raise ConfigError(issues)


def with_schedule_text(config: Any, tree: Any) -> Any:
    """The value tree of ``config`` with each scheduled field's text put back."""
    for where, sched in schedules(config).items():
        _replace(tree, where, sched.text)
    return tree


def _read_x(state: Any, sched: _schedule.Schedule, where: ValuePath) -> float:
    value = state
    for name in sched.x:
        if not hasattr(value, name):
            known = sorted(getattr(value, "__dataclass_fields__", {}))
            raise ConfigError(
                [
                    Issue(
                        where,
                        f"schedule {sched.text!r} follows {'.'.join(sched.x)!r}, which is not "
                        f"a field of the state ({type(state).__name__})",
                        hint=f"state fields: {', '.join(known)}" if known else None,
                    )
                ]
            )
        value = getattr(value, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            [
                Issue(
                    where,
                    f"schedule follows {'.'.join(sched.x)!r}, which holds {value!r}, not a number",
                )
            ]
        )
    return float(value)


def _child(obj: Any, seg: PathSegment) -> Any:
    if hasattr(obj, "__dataclass_fields__") and isinstance(seg, str):
        return getattr(obj, seg)
    if isinstance(obj, Mapping):
        return obj[_key(obj, seg)]
    return obj[seg]


def _key(mapping: Mapping[Any, Any], seg: Any) -> Any:
    name = seg.name if type(seg) is Ident else seg
    if seg in mapping:
        return seg
    for key in mapping:  # Enum keys: the tree had the member's name
        if isinstance(key, enum.Enum) and key.name == name:
            return key
    return name


def _get(config: Any, where: ValuePath) -> Any:
    obj = config
    for seg in where:
        obj = _child(obj, seg)
    return obj


def _set(config: Any, where: ValuePath, value: Any) -> None:
    parent = _get(config, where[:-1])
    last = where[-1]
    if hasattr(parent, "__dataclass_fields__") and isinstance(last, str):
        object.__setattr__(parent, last, value)  # frozen dataclasses too
    elif isinstance(parent, dict):
        parent[_key(parent, last)] = value
    elif isinstance(parent, list):
        parent[last] = value  # type: ignore[index]
    else:
        raise TypeError(
            f"cannot update schedule at {format_path(where)} inside {type(parent).__name__}"
        )


def _replace(tree: Any, where: ValuePath, text: str) -> None:
    node = tree
    for seg in where[:-1]:
        node = _tree_child(node, seg)
    last = where[-1]
    if type(node) is Struct:
        node.fields[last] = text  # type: ignore[index]
    elif type(node) is dict:
        node[_tree_key(node, last)] = text
    else:
        node[last] = text


def _tree_child(node: Any, seg: PathSegment) -> Any:
    if type(node) is Struct:
        return node.fields[seg]  # type: ignore[index]
    if type(node) is dict:
        return node[_tree_key(node, seg)]
    return node[seg]


def _tree_key(node: dict[Any, Any], seg: Any) -> Any:
    if seg in node:
        return seg
    name = seg.name if type(seg) is Ident else seg
    for key in node:
        if (type(key) is Ident and key.name == name) or key == name:
            return key
    return seg
