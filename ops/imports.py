"""Import strings (``package.module:function``), resolved on use: the stage and trainer
registries name their functions this way so that listing them imports no torch, and a launched
process can run any function given on its command line."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def import_callable(target: str) -> Callable[..., Any]:
    """The callable ``target`` names; a clear error for anything else."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise KeyError(f"{target!r} is not a 'module:function' import string")
    fn = getattr(importlib.import_module(module), attr)
    if not callable(fn):
        raise TypeError(f"{target!r} is not callable")
    return fn
