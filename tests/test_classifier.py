"""The domain classifier: learns separable classes, declared feature dim, exact save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_fixtures import make_shape_dataset

from ops.config import load_params
from ops.eval.classifier import (
    CONFIG_FILE,
    MODEL_NAME,
    WEIGHTS_FILE,
    classify,
    feature_extractor,
    load_domain_classifier,
    predict_from_features,
)
from ops.eval.classifier_training import build_domain_classifier
from ops.eval.features import extract_features, load_images
from ops.layout import DataLayout
from ops.training.runtime import torch_threads

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One training run for the module: 3 shape classes, 30 train + 12 test images each."""
    layout = DataLayout.from_env(tmp_path_factory.mktemp("clf") / "data")
    manifest = make_shape_dataset(layout, n_train=30, n_test=12, n_holdout=2, size=32)
    params = load_params(REPO / "params.yaml", preset="micro")
    params["presets"]["micro"]["benchmark"]["classifier_epochs"] = 10
    params["presets"]["micro"]["benchmark"]["classifier_batch_size"] = 16
    with torch_threads(1):
        summary = build_domain_classifier(params, layout, device="cpu")
    return layout, manifest, summary


def test_reaches_high_test_accuracy(trained):
    _, _, summary = trained
    assert summary["test_accuracy"] >= 0.9, summary
    assert set(summary["per_class_accuracy"]) == {"cross", "disc", "square"}
    assert summary["n_train"] == 90 and summary["n_test"] == 36
    assert summary["n_holdout_excluded"] == 6
    assert summary["feature_dim"] == 32 and summary["resolution"] == 32
    assert summary["train_seconds"] > 0
    assert summary["test_accuracy_trained_classes"] == summary["test_accuracy"]  # all trained


def test_saved_as_safetensors_with_config(trained):
    layout, _, summary = trained
    directory = layout.model(MODEL_NAME)
    assert (directory / WEIGHTS_FILE).is_file()
    assert not list(directory.glob("*.pt")) and not list(directory.glob("*.bin"))
    config = json.loads((directory / CONFIG_FILE).read_text())
    assert config["class_names"] == ["cross", "disc", "square"]
    assert config["summary"]["test_accuracy"] == summary["test_accuracy"]


def test_features_have_declared_dim_and_round_trip_exactly(trained):
    layout, manifest, summary = trained
    model, names = load_domain_classifier(layout)
    again, _ = load_domain_classifier(layout)
    rows = manifest[manifest.split == "test"]
    images = load_images([layout.root / p for p in rows.path])
    with torch_threads(1):
        feats = extract_features(images, feature_extractor(model))
        feats_again = extract_features(images, feature_extractor(again))
    assert feats.shape == (len(rows), summary["feature_dim"])
    assert np.array_equal(feats, feats_again)
    assert feature_extractor(model).fingerprint == f"domain:{summary['fingerprint']}"

    target = np.array([names.index(c) for c in rows.class_name])
    with torch_threads(1):
        predicted = classify(model, images)
    assert np.array_equal(predicted, predict_from_features(model, feats))
    assert np.mean(predicted == target) == pytest.approx(summary["test_accuracy"])


def test_extractor_follows_clean_fid_input_convention(trained):
    layout, _, _ = trained
    model, _ = load_domain_classifier(layout)
    extractor = feature_extractor(model)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(extractor.fn(x), extractor.fn(x.float()))
    with pytest.raises(ValueError, match="custom_fn_resize"):
        extractor.fn(torch.zeros(1, 3, 299, 299))


def test_small_finding_options_round_trip(tmp_path):
    """No stem pool + avg/max pooling (the tiny preset's) is saved and rebuilt exactly."""
    from ops.eval.classifier import DomainClassifier, save_domain_classifier

    torch.manual_seed(0)
    model = DomainClassifier(3, 8, 32, (4, 8), global_pool="avgmax", stem_pool=False).eval()
    save_domain_classifier(model, ["a", "b", "c"], tmp_path)
    again, names = load_domain_classifier(DataLayout.from_env(tmp_path), directory=tmp_path)
    x = torch.rand(2, 3, 32, 32) * 255
    assert names == ["a", "b", "c"] and again.config == model.config
    assert torch.equal(model.features(x), again.features(x))
    assert model.embed.in_features == 2 * 8  # average and max of the last block's 8 channels


def test_max_pooling_sees_a_one_pixel_spot():
    """With avgmax a single bright pixel moves the features more than with plain averaging:
    the reason it is on for findings of a pixel or two."""
    from ops.eval.classifier import DomainClassifier

    x = torch.zeros(1, 3, 32, 32)
    spot = x.clone()
    spot[..., 16, 16] = 255.0
    shifts = {}
    for pool in ("avg", "avgmax"):
        torch.manual_seed(0)
        model = DomainClassifier(2, 8, 32, (4, 8), global_pool=pool, stem_pool=False).eval()
        with torch.no_grad():
            shifts[pool] = float((model.pooled(spot) - model.pooled(x)).abs().max())
    assert shifts["avgmax"] > 2 * shifts["avg"], shifts


def test_tiny_preset_uses_the_small_finding_classifier():
    from ops.config import stage_config

    cfg = stage_config(load_params(REPO / "params.yaml", preset="tiny"), "benchmark")
    assert cfg["classifier_global_pool"] == "avgmax" and cfg["classifier_stem_pool"] is False
