"""The skip-k ablation (the paper's Fig. 3): which extra students are distilled, and their names.

``distill.k_ablation`` lists the *extra* skips; each becomes a student ``llcm_k<k>`` distilled
exactly like ``llcm`` (same solver, seed, steps and data) except for k, so the ablation varies
one thing. The main ``llcm`` model is the ablation's row at ``distill.k`` (k = 20): training it
a second time under another name would give identical weights. Kept free of torch so the
Dagster definitions can list the ablation assets when they load.
"""

from __future__ import annotations

import re
from typing import Any

from ops.config import stage_config

BASE_MODEL = "llcm"
_NAME = re.compile(rf"^{BASE_MODEL}_k(\d+)$")


def ablation_name(k: int) -> str:
    return f"{BASE_MODEL}_k{int(k)}"


def ablation_k(model: str) -> int | None:
    """k of an ablation student's name (``llcm_k10`` -> 10), None for any other model."""
    match = _NAME.match(model)
    return int(match.group(1)) if match else None


def ablation_models(params: dict[str, Any]) -> list[str]:
    """The extra students of ``distill.k_ablation``, in config order."""
    ks = stage_config(params, "distill").get("k_ablation") or []
    return [ablation_name(k) for k in dict.fromkeys(int(k) for k in ks)]


def ablation_rows(params: dict[str, Any]) -> dict[int, str]:
    """Every row of the ablation, k -> model: ``distill.k`` is ``llcm`` itself, sorted by k."""
    cfg = stage_config(params, "distill")
    rows = {int(cfg["k"]): BASE_MODEL}
    rows.update({int(k): ablation_name(k) for k in cfg.get("k_ablation") or []})
    return dict(sorted(rows.items()))


def student_config(model: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The distillation config of ``model``: the stage config itself for ``llcm``/``lcm``/...,
    for an ablation student that of ``llcm`` with its own k, not registered in MLflow's model
    registry (a research artefact, not a candidate champion)."""
    k = ablation_k(model)
    if k is None:
        return cfg
    solvers = dict(cfg.get("solvers") or {})
    if BASE_MODEL not in solvers:
        raise KeyError(f"distill.solvers has no {BASE_MODEL!r}: the ablation distills it")
    solvers[model] = solvers[BASE_MODEL]
    return {**cfg, "k": k, "solvers": solvers, "register": False}
