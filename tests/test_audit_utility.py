"""Train on synthetic, test on real: the fixed recipe, its scores and their intervals."""

from __future__ import annotations

import numpy as np
import pytest
from metric_fixtures import SHAPES, draw_shape

from ops.privacy.utility import (
    Labelled,
    Recipe,
    bootstrap_scores,
    equal_per_class,
    ovr_auc,
    utility_table,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RECIPE = Recipe(epochs=8, batch_size=16, width=8)


def shapes(per_class: int, seed: int, size: int = 32) -> Labelled:
    rng = np.random.default_rng(seed)
    images = [draw_shape(kind, size, rng) for kind in SHAPES for _ in range(per_class)]
    labels = np.repeat(np.arange(len(SHAPES)), per_class)
    return Labelled(np.stack(images), labels)


def test_utility_table_real_synthetic_and_both():
    real_train, real_test = shapes(16, seed=0), shapes(12, seed=1)
    good = shapes(16, seed=2)  # a generator that draws the classes: informative
    rng = np.random.default_rng(3)  # one that draws noise under the same labels: useless
    noise = Labelled(rng.integers(0, 255, good.images.shape, dtype=np.uint8), good.labels)
    table = utility_table(
        real_train, real_test, {"good": good, "noise": noise}, list(SHAPES), RECIPE, n_boot=200
    )
    assert set(zip(table.model, table.training, strict=True)) == {
        ("real", "real"),
        ("good", "synthetic"),
        ("good", "real+synthetic"),
        ("noise", "synthetic"),
        ("noise", "real+synthetic"),
    }
    assert set(table.class_name) == {"all", *SHAPES}
    for metric in ("accuracy", "auc"):
        finite = table[np.isfinite(table[metric])]
        assert len(finite) == len(table)
        assert (finite[f"{metric}_lo"] <= finite[metric]).all()
        assert (finite[metric] <= finite[f"{metric}_hi"]).all()
    pooled = table[table.class_name == "all"].set_index(["model", "training"])
    chance = 1 / len(SHAPES)
    # informative training data beats chance by a margin its interval can see
    assert pooled.loc[("real", "real"), "accuracy_lo"] > chance + 0.3
    assert pooled.loc[("good", "synthetic"), "accuracy_lo"] > chance + 0.3
    assert pooled.loc[("good", "synthetic"), "auc"] > 0.9
    # noise teaches nothing about real images
    assert pooled.loc[("noise", "synthetic"), "accuracy"] < chance + 0.2
    assert pooled.loc[("noise", "synthetic"), "ratio_accuracy"] < 0.6
    assert pooled.loc[("real", "real"), "ratio_accuracy"] == 1.0
    assert pooled.loc[("good", "real+synthetic"), "n_train"] == len(real_train) + len(good)
    per_class = table[(table.model == "real") & (table.class_name != "all")]
    assert (per_class.n_test == 12).all() and len(per_class) == len(SHAPES)


def test_bootstrap_is_stratified_and_brackets_the_value():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [30, 10, 5])
    correct = rng.random(len(labels)) < 0.7
    correct[-5:] = [True, True, True, False, False]  # class 2: 3 of 5 right
    predicted = np.where(correct, labels, (labels + 1) % 3)
    probs = np.full((len(labels), 3), 0.15) + 0.55 * np.eye(3)[predicted]
    probs += rng.uniform(0, 0.05, probs.shape)  # untied scores for the AUC
    out = bootstrap_scores(probs, labels, 3, n_boot=300)
    for value, lo, hi in out.values():
        assert lo <= value <= hi
    assert out["accuracy/2"][0] == pytest.approx(0.6)
    value, lo, hi = out["accuracy/2"]  # five images: a wide interval, honestly
    assert hi - lo > 0.5
    assert out["accuracy"][0] == pytest.approx(correct.mean())
    # stratified: every replicate keeps 30/10/5, so the pooled accuracy varies less than the
    # accuracy of the smallest class
    assert out["accuracy"][2] - out["accuracy"][1] < hi - lo


def test_auc_and_equal_per_class():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    positive = np.array([False, False, True, True])
    assert ovr_auc(scores, positive) == pytest.approx(0.75)
    assert ovr_auc(np.ones(4), positive) == pytest.approx(0.5)  # ties count half
    assert np.isnan(ovr_auc(scores, np.zeros(4, bool)))
    data = shapes(10, seed=0)
    subset = equal_per_class(Labelled(data.images[:25], data.labels[:25]), 5)
    assert np.bincount(subset.labels).tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match="needed"):
        equal_per_class(data, 11)
