"""The ``finetune`` section of params.yaml, and the stage configs a fine-tune runs with.

A fine-tune runs the base stages' own trainers (``ops.models.teacher``, ``ops.distill.stage``)
on the workspace; what differs is a handful of keys: fewer steps at a lower rate, the weights
to start from, and the student's registered name. They are written into a copy of ``params``
(in the preset's section, so ``stage_config`` reads them and each key stays in one place), and
that copy is what a launched trainer receives too.
"""

from __future__ import annotations

import copy
from typing import Any

from ops.config import stage_config

STAGE = "finetune"


def finetune_config(params: dict[str, Any]) -> dict[str, Any]:
    return stage_config(params, STAGE)


def with_stage_values(params: dict[str, Any], stage: str, values: dict[str, Any]) -> dict:
    """A copy of ``params`` in which stage ``stage`` has ``values`` (moved to the preset's
    section, so no key ends up in both places)."""
    out = copy.deepcopy(params)
    shared = out.setdefault(stage, {}) or {}
    scaled = out["presets"][out["preset"]].setdefault(stage, {}) or {}
    for key, value in values.items():
        shared.pop(key, None)
        scaled[key] = value
    out[stage] = shared
    out["presets"][out["preset"]][stage] = scaled
    return out


def with_finetune_values(params: dict[str, Any], **values: Any) -> dict[str, Any]:
    """``params`` with run-time keys of the fine-tune (its name, the student being trained)."""
    return with_stage_values(params, STAGE, values)


def base_uri(cfg: dict[str, Any], student: str, primary: bool) -> str:
    """The registry URI a student starts from: ``finetune.base`` for the primary student
    (``llcm finetune --base``), ``models:/<student>@champion`` for the others."""
    if primary and cfg.get("base"):
        return str(cfg["base"])
    return f"models:/{student}@champion"
