"""Does a VAE keep the diagnosis? Class accuracy on reconstructions next to the originals'.

PSNR says how close a reconstruction is on average; it barely moves when a VAE erases a
kidney stone three pixels wide, which is what the tiny presets' findings are. So the
``autoencoder_fidelity`` stage classifies held-out test images and their reconstructions with
the domain classifier (``models/domain_classifier``) and reports both accuracies, overall and
per class, in ``reports/vae_fidelity.json``. For phantom classes it also reads the finding
off both with the fixed per-family rules of ``ops.eval.findings`` (no learned weights): an
evaluator that no loss term of any VAE can have been fitted to. It is a stage of its own,
after both the autoencoder and the classifier, so neither waits for the other and the number
is always there.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import torch

from ops.config import stage_config
from ops.layout import DataLayout

FIDELITY_FILE = "vae_fidelity.json"


def _per_class(pred: torch.Tensor, truth: torch.Tensor, names: list[str]) -> dict[str, float]:
    return {
        name: float((pred[truth == i] == i).float().mean())
        for i, name in enumerate(names)
        if bool((truth == i).any())
    }


@torch.no_grad()
def reconstruction_fidelity(
    vae, layout: DataLayout, rows: pd.DataFrame, batch_size: int
) -> dict[str, Any]:
    """The domain classifier's accuracy on ``rows``' images and on their reconstructions.

    Returns ``{"recon_evaluator": "none", ...}`` when ``models/domain_classifier`` does not
    exist; otherwise overall and per-class accuracies, their ratio and the largest per-class
    drop (classes the classifier does not know, e.g. a family added later, are skipped).
    """
    from ops.eval.classifier import MODEL_NAME, classify, load_domain_classifier
    from ops.eval.features import to_uint8_hwc
    from ops.eval.findings import finding_agreement
    from ops.models.autoencoder import reconstruct
    from ops.training.image_data import iter_image_batches, to_model_range

    directory = layout.model(MODEL_NAME)
    if not (directory / "config.json").is_file():
        return {
            "recon_evaluator": "none",
            "recon_evaluator_note": f"no domain classifier at {directory}: reconstruction "
            "accuracy not measured (build domain_classifier before the autoencoder to get it)",
        }
    device = next(vae.parameters()).device
    classifier, class_names = load_domain_classifier(layout, device)
    index = {name: i for i, name in enumerate(class_names)}
    rows = rows[rows["class_name"].isin(index)].reset_index(drop=True)
    if rows.empty:
        return {"recon_evaluator": "domain_classifier", "recon_images": 0}
    truth = torch.tensor([index[c] for c in rows["class_name"]])
    pred_orig, pred_recon, pixels_orig, pixels_recon = [], [], [], []
    for _, batch in iter_image_batches(layout, rows, batch_size):
        recon = reconstruct(vae, to_model_range(batch).to(device)).cpu()
        pred_orig.append(torch.as_tensor(classify(classifier, batch)))
        pred_recon.append(torch.as_tensor(classify(classifier, recon)))
        pixels_orig.extend(to_uint8_hwc(batch))
        pixels_recon.extend(to_uint8_hwc(recon))
    orig, recon = torch.cat(pred_orig), torch.cat(pred_recon)
    names = rows["class_name"].tolist()
    findings_orig = finding_agreement(pixels_orig, names)
    findings_recon = finding_agreement(pixels_recon, names)
    acc_orig = float((orig == truth).float().mean())
    acc_recon = float((recon == truth).float().mean())
    per_orig = _per_class(orig, truth, class_names)
    per_recon = _per_class(recon, truth, class_names)
    return {
        "recon_evaluator": "domain_classifier",
        "recon_images": len(rows),
        "accuracy_originals": acc_orig,
        "accuracy_reconstructions": acc_recon,
        "accuracy_ratio": acc_recon / acc_orig if acc_orig > 0 else None,
        "max_class_drop": max(per_orig[c] - per_recon[c] for c in per_orig),
        "per_class_accuracy": {c: [per_orig[c], per_recon[c]] for c in per_orig},
        # phantom classes: [originals, reconstructions] share whose read finding fits the label
        "per_class_finding_agreement": {
            c: [findings_orig[c], findings_recon[c]] for c in findings_orig
        },
        "finding_agreement_originals": _mean(findings_orig),
        "finding_agreement_reconstructions": _mean(findings_recon),
    }


def _mean(per_class: dict[str, float]) -> float | None:
    return float(sum(per_class.values()) / len(per_class)) if per_class else None


def build_vae_fidelity(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Stage ``autoencoder_fidelity``: the VAE of ``models/base`` on up to
    ``autoencoder.fidelity_images`` held-out test images (held-out families excluded: the
    classifier never trained on them); writes and returns the summary."""
    from diffusers import AutoencoderKL

    from ops.models.autoencoder import BASE_MODEL

    cfg = stage_config(params, "autoencoder")
    vae = AutoencoderKL.from_pretrained(layout.model(BASE_MODEL) / "vae").eval()
    manifest = pd.read_parquet(layout.manifest)
    holdout = manifest["holdout"].fillna(False).astype(bool) if "holdout" in manifest else False
    test = manifest[(manifest["split"] == "test") & ~holdout].sort_values("image_id")
    limit = int(cfg.get("fidelity_images", cfg.get("eval_images", 256)))
    summary = reconstruction_fidelity(vae, layout, test.head(limit), int(cfg["eval_batch_size"]))
    layout.reports.mkdir(parents=True, exist_ok=True)
    (layout.reports / FIDELITY_FILE).write_text(json.dumps(summary, indent=2))
    return summary
