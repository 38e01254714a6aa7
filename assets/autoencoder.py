"""Assets ``autoencoder``: the frozen base components (VAE, tokenizer, text encoder) in
``models/base`` (stage function ``ops.models.autoencoder.build_autoencoder``), and
``autoencoder_fidelity``: whether its reconstructions keep the diagnosis
(``ops.eval.vae_fidelity.build_vae_fidelity``), once the domain classifier exists."""

from __future__ import annotations

from typing import Any

import dagster as dg

from assets._tracking import training_asset
from assets.metadata import picture
from ops.layout import DataLayout
from pipeline.resources import DataResource, ParamsResource


def autoencoder_metadata(summary: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    metadata: dict = {
        "source": summary["source"],
        "vae_parameters": summary["vae_parameters"],
        "text_encoder_parameters": summary["text_encoder_parameters"],
        "vocab_size": summary["vocab_size"],
        "scaling_factor": summary["scaling_factor"],
        "text_family_pair_cosine_mean": summary.get("text_family_pair_cosine_mean"),
        "text_family_pair_cosine_mean_untrained": summary.get(
            "text_family_pair_cosine_mean_untrained"
        ),
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


def fidelity_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """The domain classifier's accuracy on test images vs their reconstructions (or why not)."""
    if summary.get("recon_evaluator") != "domain_classifier":
        note = summary.get("recon_evaluator_note")
        return {"reconstruction_accuracy": note} if note else {}
    per_class = summary.get("per_class_accuracy") or {}
    return {
        "accuracy_originals": summary.get("accuracy_originals"),
        "accuracy_reconstructions": summary.get("accuracy_reconstructions"),
        "accuracy_ratio": summary.get("accuracy_ratio"),
        "max_class_drop": summary.get("max_class_drop"),
        "per_class_accuracy": dg.MetadataValue.md(
            "| class | originals | reconstructions |\n|---|---|---|\n"
            + "\n".join(f"| {c} | {o:.3f} | {r:.3f} |" for c, (o, r) in per_class.items())
        ),
    }


autoencoder = training_asset(
    "autoencoder",
    deps=["medimgs_manifest"],
    group_name="models",
    description="VAE (trained for tiny, SD's for sd15), CLIP tokenizer and frozen text encoder.",
    metadata=autoencoder_metadata,
)


@dg.asset(
    deps=["autoencoder", "domain_classifier"],
    group_name="models",
    kinds={"pytorch"},
    description="Does the VAE keep the diagnosis: the domain classifier on originals vs "
    "reconstructions of held-out test images, per class.",
)
def autoencoder_fidelity(params: ParamsResource, data: DataResource) -> dg.MaterializeResult:
    from ops.eval.vae_fidelity import build_vae_fidelity

    summary = build_vae_fidelity(params.load(), data.layout)
    metadata = {k: v for k, v in fidelity_metadata(summary).items() if v is not None}
    return dg.MaterializeResult(metadata={**metadata, "images": summary.get("recon_images", 0)})
