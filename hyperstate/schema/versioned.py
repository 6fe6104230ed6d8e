"""``Versioned``: configs and states that carry a version and upgrade old files on load."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hyperstate.schema.rewrite_rule import RewriteRule

__all__ = ["Versioned"]


class Versioned:
    """Base class of config and state dataclasses that are versioned.

    A subclass implements :meth:`version` and, once the class has changed, returns from
    :meth:`upgrade_rules` the rules that take a config written at version ``N`` to
    version ``N + 1``. Dumping writes ``version: N`` as the first field; loading a file
    without one treats it as version 0 and applies every rule from the file's version up
    to the current one, in order, before the typed conversion. A file written by newer
    code than this is an error, never a silent downgrade.

    A state class's rules upgrade the ``state.ron`` of old checkpoints the same way, on
    resume: ``RenameField`` keeps the value (an optimizer's saved state, say) of a field
    that was renamed (see "When the code changed" in docs/state.md).

    >>> from dataclasses import dataclass
    >>> from hyperstate.schema.rewrite_rule import RenameField
    >>> @dataclass
    ... class Config(Versioned):
    ...     learning_rate: float
    ...
    ...     @classmethod
    ...     def version(cls) -> int:
    ...         return 1
    ...
    ...     @classmethod
    ...     def upgrade_rules(cls):
    ...         return {0: [RenameField(old_field=("lr",), new_field=("learning_rate",))]}
    >>> import hyperstate
    >>> hyperstate.loads(Config, "Config(lr: 0.1)")
    Config(learning_rate=0.1)
    >>> print(hyperstate.dumps(Config(0.2)))
    Config(
        version: 1,
        learning_rate: 0.2,
    )
    """

    # Not annotated: the introspection resolves a subclass's annotations, this base's
    # included, in the subclass's module, which need not import ClassVar.
    __hyperstate_versioned__ = True

    @classmethod
    def version(cls) -> int:
        """The current version of the class's schema."""
        raise NotImplementedError(f"{cls.__name__}.version() is not implemented")

    @classmethod
    def upgrade_rules(cls) -> dict[int, list[RewriteRule]]:
        """Rules by version: ``{N: [rules taking version N to N + 1]}``."""
        return {}

    @classmethod
    def minimum_version(cls) -> int:
        """The oldest version that can still be upgraded (older files are an error)."""
        return 0
