"""RON (Rusty Object Notation) text <-> plain value tree.

The text layer of hyperstate. It knows nothing of dataclasses: :func:`loads` turns RON
text into builtins plus the small classes below, :func:`dumps` writes such a tree back
in the one style hyperstate uses, and :func:`locate` finds where values stand in the
text so that errors found later can point at them.

>>> value = loads("Config(lr: 3e-4, act: Relu, betas: (0.9, 0.98))")
>>> value.fields["act"]
Ident('Relu')
>>> print(dumps(value))
Config(
    lr: 0.0003,
    act: Relu,
    betas: (0.9, 0.98),
)
"""

from hyperstate.errors import ParseError
from hyperstate.ron._emitter import dumps
from hyperstate.ron._parser import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    Deferred,
    loads,
    loads_deferred,
    locate,
)
from hyperstate.ron._values import Ident, Some, Struct, TupleStruct, Value

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "Deferred",
    "Ident",
    "ParseError",
    "Some",
    "Struct",
    "TupleStruct",
    "Value",
    "dumps",
    "loads",
    "loads_deferred",
    "locate",
]
