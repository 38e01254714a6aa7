"""The pipeline's stages by name, each an ``ops`` function ``(params, layout) -> summary``.

Dagster assets, ``llcm stage NAME`` (what ``dvc.yaml`` runs) and tests call the same function,
so the three ways of running a stage cannot drift apart. Entries are import strings, resolved on
use, so that listing stages imports no torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ops.ablation import ablation_k
from ops.imports import import_callable
from ops.layout import DataLayout

StageFn = Callable[[dict[str, Any], DataLayout], dict[str, Any]]

STAGES: dict[str, str] = {
    "raw_sources": "ops.sources.materialize:materialize_raw_sources",
    "medimgs_manifest": "ops.cleaning.build:build_medimgs",
    "autoencoder": "ops.autoencoder:build_autoencoder",
    "latents": "ops.latents:build_latents",
    "teacher": "ops.teacher:build_teacher",
    "llcm": "ops.distill_stage:build_llcm",
    "lcm": "ops.distill_stage:build_lcm",
    "llcm2": "ops.distill_stage:build_llcm2",
    "domain_classifier": "ops.classifier:build_domain_classifier",
    "dreambooth": "ops.dreambooth_stage:build_dreambooth",
    "benchmark": "ops.benchmark:build_benchmark",
}


def resolve(name: str) -> StageFn:
    """A stage function by name: one of ``STAGES`` or an ablation student ``llcm_k<k>``."""
    if ablation_k(name) is not None:
        from ops.distill_stage import build_ablation_student

        return functools.partial(build_ablation_student, name)
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; known stages: {', '.join(STAGES)}, llcm_k<k>")
    return import_callable(STAGES[name])
