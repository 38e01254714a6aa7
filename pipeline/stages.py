"""The pipeline's stages by name, each an ``ops`` function ``(params, layout) -> summary``.

Dagster assets, ``llcm stage NAME`` (what ``dvc.yaml`` runs) and tests call the same function,
so the three ways of running a stage cannot drift apart. Entries are import strings, resolved on
use, so that listing stages imports no torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ops.distill.ablation import is_study_student
from ops.imports import import_callable
from ops.layout import DataLayout

StageFn = Callable[[dict[str, Any], DataLayout], dict[str, Any]]

STAGES: dict[str, str] = {
    "raw_sources": "ops.data.sources.materialize:materialize_raw_sources",
    "medimgs_manifest": "ops.data.cleaning.build:build_medimgs",
    "autoencoder": "ops.models.autoencoder:build_autoencoder",
    "autoencoder_fidelity": "ops.eval.vae_fidelity:build_vae_fidelity",
    "latents": "ops.models.latents:build_latents",
    "teacher": "ops.models.teacher:build_teacher",
    "llcm": "ops.distill.stage:build_llcm",
    "lcm": "ops.distill.stage:build_lcm",
    "llcm2": "ops.distill.stage:build_llcm2",
    "llcm_pcm": "ops.distill.stage:build_llcm_pcm",
    "llcm_dmd": "ops.distill.dmd_stage:build_llcm_dmd",
    "domain_classifier": "ops.eval.classifier_training:build_domain_classifier",
    "dreambooth": "ops.baselines.dreambooth_stage:build_dreambooth",
    "benchmark": "ops.eval.runner:build_benchmark",
    "utility": "ops.privacy.stages:build_utility",
    "privacy_audit": "ops.privacy.stages:build_privacy_audit",
    "dog_thorax_finetune": "ops.finetune.dog_thorax:build_dog_thorax",
}


def resolve(name: str) -> StageFn:
    """A stage function by name: one of ``STAGES`` or an ablation student ``llcm_k<k>``."""
    if name not in STAGES and is_study_student(name):
        from ops.distill.stage import build_ablation_student

        return functools.partial(build_ablation_student, name)
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; known stages: {', '.join(STAGES)}, llcm_k<k>")
    return import_callable(STAGES[name])
