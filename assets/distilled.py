"""Assets ``llcm``, ``lcm`` and ``llcm2``: consistency models distilled from the teacher; and the
skip-k ablation students ``llcm_k<k>`` (the paper's Fig. 3).

One asset family: the three differ only in the teacher's solver (``distill.solvers``), the
ablation students only in k (``distill.k_ablation``, read from params.yaml when the code
location loads, like the benchmark's partitions). Each calls its stage function in
``ops.distill_stage`` and attaches the loss, throughput, the registered model version (not for
ablation students) and a sample grid (classes x 1, 2, 4, 8 steps).
"""

from __future__ import annotations

import dagster as dg

from assets._tracking import run_training
from assets.metadata import picture
from ops.ablation import ablation_k, ablation_models
from ops.config import load_params
from pipeline.launcher import LauncherResource
from pipeline.resources import DataResource, MlflowResource, ParamsResource

DESCRIPTIONS = {
    "llcm": "LLCM: consistency distillation with the paper's leapfrog step (eq. 15-16).",
    "lcm": "LCM baseline: consistency distillation with the DDIM step.",
    "llcm2": "LLCM-2: consistency distillation with the second-order leapfrog step.",
}


def distilled_asset(name: str, group: str = "distill") -> dg.AssetsDefinition:
    k = ablation_k(name)
    description = DESCRIPTIONS.get(name) or (
        f"Skip-k ablation (Fig. 3): llcm distilled with k = {k} instead of distill.k."
    )

    @dg.asset(
        name=name,
        deps=["teacher", "latents"],
        group_name=group,
        kinds={"pytorch", "mlflow"},
        description=description,
    )
    def _asset(
        context,
        params: ParamsResource,
        data: DataResource,
        mlflow: MlflowResource,
        launcher: LauncherResource,
    ) -> dg.MaterializeResult:
        summary = run_training(context, launcher, name, params, data, mlflow)
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
            metadata["samples"] = picture(summary["grid"], f"{name} samples at 1, 2, 4, 8 steps")
        return dg.MaterializeResult(metadata=metadata)

    return _asset


llcm = distilled_asset("llcm")
lcm = distilled_asset("lcm")
llcm2 = distilled_asset("llcm2")
ABLATION_ASSETS = [
    distilled_asset(name, "distill_ablation") for name in ablation_models(load_params())
]
