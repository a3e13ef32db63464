"""Recipe steps are the registered methods of :mod:`netcompress.core.methods`.

A step ``{op: prune, method: channel, ratio: 0.5}`` is method ``prune/channel`` with its config read
from the step's other keys. This module only names that lookup for the runner.
"""

from __future__ import annotations

from netcompress.core.methods import METHODS, MethodSpec, find_method

__all__ = ["METHODS", "MethodSpec", "find_method"]
