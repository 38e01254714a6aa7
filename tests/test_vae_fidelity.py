"""The tiny presets' extras around the base components: prompt separation and the VAE's
reconstruction loss terms and class fidelity."""

from __future__ import annotations

import pandas as pd
import torch
from model_fixtures import CLASSES, copy_data, prepared_data

from ops.config import stage_config
from ops.data.prompts import build_prompt
from ops.eval.vae_fidelity import FIDELITY_FILE, build_vae_fidelity, reconstruction_fidelity
from ops.layout import DataLayout
from ops.models.presets import build_text_encoder, build_tokenizer
from ops.models.text_separation import family_pairs, separate_prompts, separation_report
from ops.models.vae_loss import gradient_l1, reconstruction_loss

PROMPTS = [""] + [build_prompt(labels) for labels, _, _ in CLASSES.values()]


def test_separation_training_pulls_prompts_apart_and_leaves_a_frozen_encoder(
    tmp_path, micro_params
):
    cfg = stage_config(micro_params, "text")
    tok = build_tokenizer(cfg, PROMPTS[1:], tmp_path / "tok")
    encoder = build_text_encoder(cfg, tok, seed=0)
    pairs = [(i, j) for i in range(len(PROMPTS)) for j in range(i + 1, len(PROMPTS))]
    before = separation_report(encoder, tok, PROMPTS, pairs)["all_pairs_cosine_mean"]
    losses = separate_prompts(encoder, tok, PROMPTS, steps=30, learning_rate=1e-2, seed=0)
    after = separation_report(encoder, tok, PROMPTS, pairs)["all_pairs_cosine_mean"]
    assert len(losses) == 30 and losses[-1] < losses[0]
    assert after < before
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training


def test_family_pairs_share_everything_but_the_disease():
    labels = [
        {"species": "human", "body_part": "chest", "modality": "X-ray"},
        {"species": "human", "body_part": "brain", "modality": "MRI"},
        {"species": "human", "body_part": "chest", "modality": "X-ray"},
    ]
    assert family_pairs(labels) == [(0, 2)]


def test_reconstruction_loss_terms():
    x = torch.zeros(1, 3, 8, 8)
    spot = x.clone()
    spot[..., 4, 4] = 1.0
    assert reconstruction_loss(x, x, l2_weight=1.0, gradient_weight=1.0) == 0
    assert gradient_l1(x, spot) > 0
    l1 = reconstruction_loss(x, spot)
    assert reconstruction_loss(x, spot, l2_weight=1.0) > l1  # the squared error adds to it


def test_fidelity_says_so_without_a_domain_classifier(tmp_path):
    summary = reconstruction_fidelity(
        torch.nn.Linear(1, 1), DataLayout(tmp_path), pd.DataFrame(), batch_size=4
    )
    assert (
        summary["recon_evaluator"] == "none"
        and "domain classifier" in (summary["recon_evaluator_note"])
    )


def test_fidelity_stage_classifies_originals_and_reconstructions_per_class(
    tmp_path_factory, tmp_path
):
    """The stage on a trained micro VAE and a trained micro domain classifier."""
    from ops.eval.classifier_training import build_domain_classifier
    from ops.training.runtime import torch_threads

    layout = copy_data(prepared_data(tmp_path_factory), DataLayout(tmp_path / "data"))
    from ops.config import load_params

    params = load_params(preset="micro")
    with torch_threads(1):
        build_domain_classifier(params, layout, device="cpu")
        summary = build_vae_fidelity(params, layout)
    assert summary["recon_evaluator"] == "domain_classifier" and summary["recon_images"] > 0
    assert 0 <= summary["accuracy_reconstructions"] <= 1
    per_class = summary["per_class_accuracy"]
    assert per_class and all(len(pair) == 2 for pair in per_class.values())
    saved = (layout.reports / FIDELITY_FILE).read_text()
    assert '"per_class_accuracy"' in saved
    # the fixed-rule finding readers cover phantom classes only: none among the fixture's
    assert summary["per_class_finding_agreement"] == {}
    assert summary["finding_agreement_reconstructions"] is None
