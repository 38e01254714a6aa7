"""Asset ``latents``: the base training images encoded once and the prompt embeddings cached
(stage function ``ops.models.latents.build_latents``; skips itself when its inputs are unchanged)."""

from __future__ import annotations

import dagster as dg

from pipeline.resources import DataResource, ParamsResource
from pipeline.stages import resolve


@dg.asset(
    deps=["autoencoder", "medimgs_manifest"],
    group_name="models",
    kinds={"pytorch", "safetensors"},
    description="VAE latents (posterior mean x scaling factor) in shards + prompt embeddings.",
)
def latents(params: ParamsResource, data: DataResource) -> dg.MaterializeResult:
    layout = data.layout
    summary = resolve("latents")(params.load(), layout)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": summary["images"],
            "classes": summary["classes"],
            "latent_shape": dg.MetadataValue.json(summary["latent_shape"]),
            "shards": summary["shards"],
            "shards_written": summary["shards_written"],
            "skipped": summary["skipped"],
            "fingerprint": summary["fingerprint"],
            "seconds": summary["seconds"],
            "latents_dir": dg.MetadataValue.path(summary["latents_dir"]),
        }
    )
