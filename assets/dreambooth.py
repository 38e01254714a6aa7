"""Asset ``dreambooth``: the teacher fine-tuned DreamBooth-style on the evaluated classes, the
few-shot baseline of the benchmark (stage function ``ops.dreambooth_stage.build_dreambooth``),
run where the ``launcher`` resource says (under a launch the ranks share the prior images)."""

import dagster as dg

from assets._tracking import run_training
from assets.benchmark import image_markdown
from pipeline.launcher import LauncherResource
from pipeline.resources import DataResource, MlflowResource, ParamsResource


@dg.asset(
    deps=["teacher", "latents", "medimgs_manifest"],
    group_name="baselines",
    kinds={"pytorch", "diffusers"},
    description="Teacher UNet fine-tuned with a rare-token identifier and class-prior preservation.",
)
def dreambooth(
    context,
    params: ParamsResource,
    data: DataResource,
    mlflow: MlflowResource,
    launcher: LauncherResource,
) -> dg.MaterializeResult:
    import json

    from ops.benchmark_models import DREAMBOOTH_PROMPTS_FILE

    summary = run_training(context, launcher, "dreambooth", params, data, mlflow)
    meta = json.loads((data.layout.model("dreambooth") / DREAMBOOTH_PROMPTS_FILE).read_text())
    prompts = "\n".join(
        ["| class | identifier prompt |", "| --- | --- |"]
        + [f"| {name} | {prompt} |" for name, prompt in meta["prompts"].items()]
    )
    return dg.MaterializeResult(
        metadata={
            "loss_before": summary["loss_before"],
            "loss_after": summary["loss_after"],
            "steps": summary["steps"],
            "prompts": dg.MetadataValue.md(prompts),
            "classes_without_latents": dg.MetadataValue.json(summary["classes_without_latents"]),
            "prior_images": image_markdown(summary["prior_grid"], "prior images"),
            "model": dg.MetadataValue.path(summary["model_dir"]),
            "train_seconds": summary["train_seconds"],
            "world_size": summary["world_size"],
        }
    )
