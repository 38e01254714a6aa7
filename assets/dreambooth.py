"""Asset ``dreambooth``: the teacher fine-tuned DreamBooth-style on the evaluated classes, the
few-shot baseline of the benchmark (stage function ``ops.baselines.dreambooth_stage.build_dreambooth``),
run where the ``launcher`` resource says (under a launch the ranks share the prior images)."""

from __future__ import annotations

import json
from typing import Any

import dagster as dg

from assets._tracking import training_asset
from assets.metadata import picture
from ops.eval.plan import DREAMBOOTH_PROMPTS_FILE
from ops.layout import DataLayout


def dreambooth_metadata(summary: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    meta = json.loads((layout.model("dreambooth") / DREAMBOOTH_PROMPTS_FILE).read_text())
    prompts = "\n".join(
        ["| class | identifier prompt |", "| --- | --- |"]
        + [f"| {name} | {prompt} |" for name, prompt in meta["prompts"].items()]
    )
    return {
        "loss_before": summary["loss_before"],
        "loss_after": summary["loss_after"],
        "steps": summary["steps"],
        "prompts": dg.MetadataValue.md(prompts),
        "classes_without_latents": dg.MetadataValue.json(summary["classes_without_latents"]),
        "prior_images": picture(summary["prior_grid"], "prior images"),
        "model": dg.MetadataValue.path(summary["model_dir"]),
        "train_seconds": summary["train_seconds"],
        "world_size": summary["world_size"],
    }


dreambooth = training_asset(
    "dreambooth",
    deps=["teacher", "latents", "medimgs_manifest"],
    group_name="baselines",
    kinds=frozenset({"pytorch", "diffusers"}),
    description="Teacher UNet fine-tuned with a rare-token identifier and class-prior preservation.",
    metadata=dreambooth_metadata,
)
