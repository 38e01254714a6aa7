"""The study students: the skip-k ablation (the paper's Fig. 3) and the recipe variants, which
extra students are distilled, and their names.

``distill.k_ablation`` lists the *extra* skips; each becomes a student ``llcm_k<k>`` distilled
exactly like ``llcm`` (same solver, seed, steps and data) except for k, so the ablation varies
one thing. The main ``llcm`` model is the ablation's row at ``distill.k`` (k = 20): training it
a second time under another name would give identical weights.

``distill.variants`` names recipe changes a careful LCM implementer would try (gradient
clipping and weight decay, iCT's pseudo-Huber c, the guidance range, a stop-gradient target):
each becomes a student ``llcm_<name>``, distilled like ``llcm`` with those keys changed, so each
is measured against ``llcm`` alone. Kept free of torch so the Dagster definitions can list the
study assets when they load.
"""

from __future__ import annotations

import re
from typing import Any

from ops.config import stage_config

BASE_MODEL = "llcm"
# the distilled models of make run, each its own asset and registered model: llcm_pcm and
# llcm_dmd share the variants' llcm_ prefix but are no study students
MAIN_STUDENTS = ("llcm", "lcm", "llcm2", "llcm_pcm", "llcm_dmd")
_NAME = re.compile(rf"^{BASE_MODEL}_k(\d+)$")
_VARIANT = re.compile(rf"^{BASE_MODEL}_([a-z][a-z0-9_]*)$")


def ablation_name(k: int) -> str:
    return f"{BASE_MODEL}_k{int(k)}"


def ablation_k(model: str) -> int | None:
    """k of an ablation student's name (``llcm_k10`` -> 10), None for any other model."""
    match = _NAME.match(model)
    return int(match.group(1)) if match else None


def variant_name(model: str) -> str | None:
    """The variant of a recipe-variant student's name (``llcm_clip`` -> ``clip``), else None."""
    if ablation_k(model) is not None or model in MAIN_STUDENTS:
        return None
    match = _VARIANT.match(model)
    return match.group(1) if match else None


def variant_models(params: dict[str, Any]) -> dict[str, str]:
    """Every recipe variant of ``distill.variants`` -> its student's name."""
    variants = stage_config(params, "distill").get("variants") or {}
    return {name: f"{BASE_MODEL}_{name}" for name in variants}


def is_study_student(model: str) -> bool:
    """A skip-k ablation or recipe-variant student: ``llcm`` with one thing changed."""
    return ablation_k(model) is not None or variant_name(model) is not None


def ablation_models(params: dict[str, Any]) -> list[str]:
    """The extra students of ``distill.k_ablation``, then of ``distill.variants``, in config
    order."""
    cfg = stage_config(params, "distill")
    ks = cfg.get("k_ablation") or []
    variants = list(variant_models(params).values())
    return [ablation_name(k) for k in dict.fromkeys(int(k) for k in ks)] + variants


def ablation_rows(params: dict[str, Any]) -> dict[int, str]:
    """Every row of the ablation, k -> model: ``distill.k`` is ``llcm`` itself, sorted by k."""
    cfg = stage_config(params, "distill")
    rows = {int(cfg["k"]): BASE_MODEL}
    rows.update({int(k): ablation_name(k) for k in cfg.get("k_ablation") or []})
    return dict(sorted(rows.items()))


# distill keys a variant may set although the base config leaves them out (read with defaults;
# ``phases`` makes the variant a phased student, like llcm_pcm)
OPTIONAL_KEYS = {"max_grad_norm", "weight_decay", "warmup_steps", "phases"}


def student_config(model: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The distillation config of ``model``: the stage config itself for ``llcm``/``lcm``/...;
    for an ablation student that of ``llcm`` with its own k, for a variant that of ``llcm``
    with the variant's keys; neither registered in MLflow's model registry (research
    artefacts, not candidate champions)."""
    k, variant = ablation_k(model), variant_name(model)
    if k is None and (variant is None or model in (cfg.get("solvers") or {})):
        return with_phases(model, cfg)
    solvers = dict(cfg.get("solvers") or {})
    if BASE_MODEL not in solvers:
        raise KeyError(f"distill.solvers has no {BASE_MODEL!r}: the ablation distills it")
    solvers[model] = solvers[BASE_MODEL]
    if k is not None:
        return {**cfg, "k": k, "solvers": solvers, "register": False}
    variants = cfg.get("variants") or {}
    if variant not in variants:
        known = ", ".join(f"{BASE_MODEL}_{v}" for v in variants) or "none"
        raise KeyError(f"{model!r}: distill.variants has no {variant!r} (variants: {known})")
    changed = dict(variants[variant] or {})
    unknown = sorted(set(changed) - set(cfg) - OPTIONAL_KEYS)
    if unknown:
        raise KeyError(f"distill.variants.{variant} changes unknown keys {unknown}")
    return {**cfg, **changed, "solvers": solvers, "register": False}


def with_phases(model: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with ``phases`` set for a phased student (``distill.phased``: model -> number of
    phases, PCM): its loss and sampler use the phased consistency function."""
    phases = (cfg.get("phased") or {}).get(model)
    return {**cfg, "phases": int(phases)} if phases else cfg
