"""A base config in a module of its own: its annotations name types only this module has."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Mode(enum.Enum):
    FAST = 1
    SLOW = 2


@dataclass
class BaseConfig:
    mode: Mode = Mode.FAST
