"""Assets ``llcm``, ``lcm``, ``llcm2``, ``llcm_pcm`` and ``llcm_dmd``: consistency models
distilled from the teacher; and the study students ``llcm_k<k>`` (the paper's Fig. 3) and
``llcm_<variant>``.

One asset family: the first three differ only in the teacher's solver (``distill.solvers``),
``llcm_pcm`` from ``llcm`` only in its consistency function (``distill.phased``),
``llcm_dmd`` refines the trained ``llcm`` by distribution matching (``ops.distill.dmd_stage``), the
ablation students only in k (``distill.k_ablation``, read from params.yaml when the code
location loads, like the benchmark's partitions). Each calls its stage function in
``ops.distill`` and attaches the loss, throughput, the registered model version (not for
ablation students) and a sample grid (classes x 1, 2, 4, 8 steps).
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from assets._tracking import training_asset
from assets.metadata import picture
from ops.config import load_params
from ops.distill.ablation import ablation_k, ablation_models
from ops.layout import DataLayout

DESCRIPTIONS = {
    "llcm": "LLCM: consistency distillation with the paper's leapfrog step (eq. 15-16).",
    "lcm": "LCM baseline: consistency distillation with the DDIM step.",
    "llcm2": "LLCM-2: consistency distillation with the second-order leapfrog step.",
    "llcm_pcm": "LLCM-PCM: the leapfrog step, phased consistency (PCM): deterministic few-step.",
    "llcm_dmd": "LLCM-DMD: llcm refined by distribution matching (DMD2) with a fake score.",
}


def distilled_metadata(summary: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    metadata: dict = {
        "solver": summary["solver"],
        "k": summary["k"],
        "steps": summary["final_step"],
        "resumed_from": summary["resumed_from"],
        "final_loss": summary["final_loss"],
        "samples_per_second": summary["samples_per_second"],
        "world_size": summary["world_size"],
        "unet_parameters": summary["unet_parameters"],
        "model_dir": dg.MetadataValue.path(summary["model_dir"]),
        "mlflow_run_id": summary.get("mlflow_run_id") or "",
        "loss_curve": dg.MetadataValue.json(summary["loss_curve"]),
    }
    if "registered_version" in summary:
        metadata["registered_version"] = summary["registered_version"]
    if summary.get("grid"):
        title = f"{summary['model']} samples at 1, 2, 4, 8 steps"
        metadata["samples"] = picture(summary["grid"], title)
    return metadata


def distilled_asset(
    name: str,
    group: str = "distill",
    deps: tuple[str, ...] = ("teacher", "latents"),
    priority: int = 0,
) -> dg.AssetsDefinition:
    k = ablation_k(name)
    description = DESCRIPTIONS.get(name) or (
        f"Skip-k ablation (Fig. 3): llcm distilled with k = {k} instead of distill.k."
        if k is not None
        else f"Recipe variant: llcm distilled with distill.variants.{name.removeprefix('llcm_')}."
    )
    return training_asset(
        name,
        deps=list(deps),
        group_name=group,
        description=description,
        metadata=distilled_metadata,
        priority=priority,
    )


# llcm first among the distillations that wait for the teacher: llcm_dmd starts from it, and is
# the longest of them, so on make run's two slots it then overlaps the rest instead of following
llcm = distilled_asset("llcm", priority=1)
lcm = distilled_asset("lcm")
llcm2 = distilled_asset("llcm2")
# a study, not a make run model: the phased objective lost to llcm at every step count
# (README), so it trains with the ablation students under make experiments
llcm_pcm = distilled_asset("llcm_pcm", "distill_ablation")
llcm_dmd = distilled_asset("llcm_dmd", deps=("teacher", "latents", "llcm"), priority=1)
ABLATION_ASSETS = [
    distilled_asset(name, "distill_ablation") for name in ablation_models(load_params())
]
