"""Asset ``autoencoder``: the frozen base components (VAE, tokenizer, text encoder) in
``models/base`` (stage function ``ops.models.autoencoder.build_autoencoder``)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from assets._tracking import training_asset
from assets.metadata import picture
from ops.layout import DataLayout


def autoencoder_metadata(summary: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    metadata: dict = {
        "source": summary["source"],
        "vae_parameters": summary["vae_parameters"],
        "text_encoder_parameters": summary["text_encoder_parameters"],
        "vocab_size": summary["vocab_size"],
        "scaling_factor": summary["scaling_factor"],
        "psnr_db": summary.get("psnr_db"),
        "final_loss": summary.get("final_loss"),
        "steps": summary.get("final_step", 0),
        "train_seconds": summary.get("seconds", 0.0),
        "mlflow_run_id": summary.get("mlflow_run_id") or "",
        "model_dir": dg.MetadataValue.path(summary["model_dir"]),
    }
    if summary.get("grid"):
        metadata["reconstructions"] = picture(summary["grid"], "test images over reconstructions")
    return {k: v for k, v in metadata.items() if v is not None}


autoencoder = training_asset(
    "autoencoder",
    deps=["medimgs_manifest"],
    group_name="models",
    description="VAE (trained for tiny, SD's for sd15), CLIP tokenizer and frozen text encoder.",
    metadata=autoencoder_metadata,
)
