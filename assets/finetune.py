"""Assets of fine-tuning on custom data (``ops.finetune``).

- ``finetuned``: one dynamic partition per custom dataset (``custom_datasets``), added from the
  UI or by ``llcm finetune``; a run ingests the partition's sources (run config, or what the
  workspace was last ingested from), fine-tunes the teacher and the champion student, and
  registers ``models:/<partition>@champion``.
- ``dog_thorax_finetune``: the paper's unseen dog cardiac X-ray experiment, built in.
"""

from typing import Any, Optional

import dagster as dg

from assets._tracking import tracked_params
from assets.metadata import picture
from ops.config import stage_config
from ops.data.sources.adhoc import resolve_source_texts
from pipeline.resources import DataResource, MlflowResource, ParamsResource

custom_datasets = dg.DynamicPartitionsDefinition(name="custom_datasets")


class FinetuneConfig(dg.Config):
    """What to fine-tune on. ``sources`` empty: the sources the workspace was last ingested
    from (``llcm finetune`` records them), or the dataset already in ``custom/<name>/``."""

    sources: list[str] = []
    species: str = "human"
    body_part: str = "body"
    modality: str = "medical image"
    exclude: list[str] = []
    steps: Optional[int] = None  # noqa: UP045 (Dagster reads the annotation at runtime)
    base: Optional[str] = None  # noqa: UP045


def finetune_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    from ops.finetune.dataset import class_table

    pictures = summary["pictures"]
    return {
        "classes": dg.MetadataValue.md(class_table(summary["classes"], summary["train_counts"])),
        "registered": dg.MetadataValue.text(summary["registered"]),
        "model": dg.MetadataValue.path(summary["model_dir"]),
        "replay_images": summary["replay_images"],
        "teacher_final_loss": summary["teacher"].get("final_loss"),
        "student_final_loss": dg.MetadataValue.json(
            {n: s.get("final_loss") for n, s in summary["students"].items()}
        ),
        "before": picture(pictures["before"], "base student, steps 1/2/4"),
        "after": picture(pictures["after"], "fine-tuned student, steps 1/2/4"),
        "loss": picture(pictures["loss"], "fine-tune losses"),
        "seconds": summary["seconds"],
    }


@dg.asset(
    partitions_def=custom_datasets,
    deps=["teacher", "latents", "llcm"],
    group_name="finetune",
    kinds={"pytorch", "mlflow"},
    description="Teacher and champion student fine-tuned on a custom dataset (one partition each).",
)
def finetuned(
    context: dg.AssetExecutionContext,
    config: FinetuneConfig,
    params: ParamsResource,
    data: DataResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    from ops.finetune.settings import with_finetune_values
    from ops.finetune.stage import run_finetune

    layout = data.layout
    run_params = tracked_params(params.load(), mlflow, layout)
    if config.steps:
        run_params = with_finetune_values(
            run_params, teacher_steps=config.steps, student_steps=config.steps
        )
    defaults = {"species": config.species, "body_part": config.body_part,
                "modality": config.modality}  # fmt: skip
    specs = resolve_source_texts(
        config.sources,
        stage_config(run_params, "ingest").get("registry"),
        defaults,
        tuple(config.exclude),
    )
    summary = run_finetune(
        run_params, layout, context.partition_key, sources=specs, base=config.base,
        log=context.log.info,
    )  # fmt: skip
    return dg.MaterializeResult(metadata=finetune_metadata(summary))


@dg.asset(
    deps=["teacher", "latents", "llcm", "lcm", "domain_classifier", "medimgs_manifest"],
    group_name="finetune",
    kinds={"pytorch", "mlflow"},
    description="The unseen dog cardiac X-ray experiment: fine-tune, benchmark, heart ratios.",
)
def dog_thorax_finetune(
    context: dg.AssetExecutionContext,
    params: ParamsResource,
    data: DataResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    from pathlib import Path

    from ops.finetune.dog_thorax import build_dog_thorax

    layout = data.layout
    summary = build_dog_thorax(tracked_params(params.load(), mlflow, layout), layout)
    pictures = summary["pictures"]
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(Path(summary["report"]).read_text()),
            "figure4": picture(summary["figure"], "Fig. 4: real, then each model"),
            "before": picture(pictures["before"], "base LLCM on the dog classes"),
            "after": picture(pictures["after"], "fine-tuned LLCM on the dog classes"),
            "loss": picture(pictures["loss"], "fine-tune losses"),
            "seconds": summary["seconds"],
        }
    )
