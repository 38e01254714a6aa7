"""Asset ``teacher``: Stable Diffusion's UNet trained on the latents, saved as a stock
``StableDiffusionPipeline`` in ``models/teacher`` (stage function ``ops.models.teacher.build_teacher``)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from assets._tracking import training_asset
from assets.metadata import picture
from ops.layout import DataLayout


def teacher_metadata(summary: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    return {
        "unet_parameters": summary["unet_parameters"],
        "train_latents": summary["train_latents"],
        "classes": summary["classes"],
        "steps": summary["final_step"],
        "resumed_from": summary["resumed_from"],
        "final_loss": summary["final_loss"],
        "world_size": summary["world_size"],
        "global_batch_size": summary["global_batch_size"],
        "samples_per_second": summary["samples_per_second"],
        "train_seconds": summary["seconds"],
        "mlflow_run_id": summary.get("mlflow_run_id") or "",
        "model_dir": dg.MetadataValue.path(summary["model_dir"]),
        "loss_curve": dg.MetadataValue.json(summary["loss_curve"]),
        "samples": picture(summary["grid"], "teacher samples, one row per class (DDIM, CFG)"),
    }


teacher = training_asset(
    "teacher",
    deps=["latents", "autoencoder"],
    group_name="models",
    description="The teacher: SD UNet (epsilon objective, prompt dropout, EMA) + base components.",
    metadata=teacher_metadata,
)
