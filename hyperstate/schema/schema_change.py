"""Changes between two schemas, with their severity and the rules that would handle them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from hyperstate.schema.rewrite_rule import RewriteRule

__all__ = ["SchemaChange", "Severity"]


class Severity(enum.IntEnum):
    """How much a change matters to old config files.

    ``INFO``: old files load as before. ``WARN``: some old files fail to load or load
    differently unless an upgrade rule handles it. ``ERROR``: old files cannot load and
    no rule can be proposed automatically.
    """

    INFO = 0
    WARN = 1
    ERROR = 2


@dataclass
class SchemaChange:
    """One difference between the old schema and the current classes.

    Attributes:
        severity: see :class:`Severity`.
        kind: a stable identifier, e.g. ``"field_renamed"``, ``"enum_variant_added"``.
        message: the line shown in reports, e.g. ``field renamed to learning_rate: lr``.
        path: where, as a display path (``layers[*].width``).
        owner: the ``Versioned`` struct whose version and rules cover the change (or the
            root class when none does).
        proposed_rules: rules that would upgrade old files across this change.
    """

    severity: Severity
    kind: str
    message: str
    path: str = ""
    owner: str = ""
    proposed_rules: list[RewriteRule] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.severity.name:<5} {self.message}"
