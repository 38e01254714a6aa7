"""Train on synthetic, test on real: does a classifier trained on generated images work on
real ones?

One fixed recipe (``Recipe``: a small CNN on 64x64 RGB, AdamW, fixed epochs, seeded) is trained
on the real train split, on each model's synthetic images (the same count per class), and on
real plus synthetic; every classifier is tested on the real test split. The recipe is fixed on
purpose: the question is what the training images are worth, not how well a recipe can be
tuned to them. Scores: accuracy and macro one-vs-rest AUC, per class too (accuracy = recall of
that class), each with a class-stratified bootstrap 95% interval over test images, and the
synthetic / real ratio of each score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torch import nn

Array = np.ndarray


@dataclass(frozen=True)
class Labelled:
    """Images (n, h, w, 3) uint8 at the recipe's resolution, and class indices (n,)."""

    images: Array
    labels: Array

    def __post_init__(self) -> None:
        if (
            self.images.ndim != 4
            or self.images.shape[-1] != 3
            or len(self.images) != len(self.labels)
        ):
            raise ValueError(f"need (n, h, w, 3) images with n labels, got {self.images.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def __add__(self, other: Labelled) -> Labelled:
        return Labelled(
            np.concatenate([self.images, other.images]), np.concatenate([self.labels, other.labels])
        )


@dataclass(frozen=True)
class Recipe:
    """The one classifier recipe every training set gets."""

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    width: int = 16


def equal_per_class(data: Labelled, per_class: int, seed: int = 0) -> Labelled:
    """``per_class`` images of every class present (seeded choice), so that no training set
    wins by having more of the easy classes."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(data.labels):
        idx = np.flatnonzero(data.labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} images, {per_class} needed")
        keep.append(np.sort(rng.choice(idx, per_class, replace=False)))
    order = np.concatenate(keep)
    return Labelled(data.images[order], data.labels[order])


def small_cnn(n_classes: int, width: int = 16) -> nn.Module:
    """A strided stem and four conv blocks (GroupNorm: no batch statistics to drift between
    train and test). The stem halves 64 px to 32 at once: a quarter of the cost, and the
    classes of MedImgs differ at scales larger than a pixel."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, stride=2, padding=1), nn.SiLU()]
    channels = [width, width, 2 * width, 4 * width, 8 * width]
    for i, (a, b) in enumerate(zip(channels, channels[1:], strict=False)):
        layers += [nn.Conv2d(a, b, 3, padding=1), nn.GroupNorm(4, b), nn.SiLU()]
        layers.append(nn.MaxPool2d(2) if i < 3 else nn.AdaptiveAvgPool2d(1))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels[-1], n_classes))


def _tensor(images: Array) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_classifier(data: Labelled, n_classes: int, recipe: Recipe, seed: int = 0) -> nn.Module:
    """The recipe trained on ``data`` (seeded: same data, same weights)."""
    torch.manual_seed(seed)
    model = small_cnn(n_classes, recipe.width)
    opt = torch.optim.AdamW(
        model.parameters(), recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    x, y = _tensor(data.images), torch.from_numpy(np.asarray(data.labels, np.int64))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(recipe.epochs):
        for batch in torch.randperm(len(y), generator=gen).split(recipe.batch_size):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict_proba(model: nn.Module, images: Array, batch_size: int = 128) -> Array:
    """(n, classes) softmax probabilities."""
    out = [
        torch.softmax(model(_tensor(images[i : i + batch_size])), 1)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy().astype(np.float64)


def ovr_auc(scores: Array, positive: Array) -> float:
    """One-vs-rest ROC AUC by the rank-sum formula (ties count half); NaN without both kinds."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def scores(probs: Array, labels: Array, n_classes: int) -> dict[str, float]:
    """Accuracy, macro AUC and per-class accuracy / AUC of one set of predictions."""
    correct = probs.argmax(1) == labels
    out = {"accuracy": float(correct.mean())}
    aucs = [ovr_auc(probs[:, c], labels == c) for c in range(n_classes)]
    out["auc"] = float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan")
    for c in range(n_classes):
        out[f"accuracy/{c}"] = (
            float(correct[labels == c].mean()) if (labels == c).any() else float("nan")
        )
        out[f"auc/{c}"] = aucs[c]
    return out


def bootstrap_scores(
    probs: Array, labels: Array, n_classes: int, n_boot: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """Each score with its class-stratified bootstrap 95% interval: (value, lo, hi). Test images
    are resampled within their class, so every replicate keeps the test split's class mix."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in range(n_classes)]
    point = scores(probs, labels, n_classes)
    reps = {k: [] for k in point}
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(ix, len(ix)) for ix in by_class if len(ix)])
        for k, v in scores(probs[idx], labels[idx], n_classes).items():
            reps[k].append(v)
    out = {}
    for k, v in point.items():
        values = np.asarray(reps[k])
        values = values[np.isfinite(values)]
        lo, hi = np.percentile(values, [2.5, 97.5]) if len(values) else (np.nan, np.nan)
        out[k] = (v, float(lo), float(hi))
    return out


def utility_table(
    real_train: Labelled,
    real_test: Labelled,
    synthetic: Mapping[str, Labelled],
    class_names: Sequence[str],
    recipe: Recipe | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (model, training, class_name): training is ``real`` (model ``real``),
    ``synthetic`` or ``real+synthetic``; class_name ``all`` holds accuracy and macro AUC.
    ``ratio_accuracy`` / ``ratio_auc`` divide by the real-trained classifier's score."""
    recipe = recipe or Recipe()
    n_classes = len(class_names)
    runs = [("real", "real", real_train)]
    for model, syn in synthetic.items():
        runs += [(model, "synthetic", syn), (model, "real+synthetic", real_train + syn)]
    rows, baseline = [], None
    for model, training, data in runs:
        net = train_classifier(data, n_classes, recipe, seed)
        result = bootstrap_scores(
            predict_proba(net, real_test.images), real_test.labels, n_classes, n_boot, seed
        )
        if baseline is None:  # the real-trained classifier comes first
            baseline = result
        for c, name in [(None, "all"), *enumerate(class_names)]:
            acc, auc = ("accuracy", "auc") if c is None else (f"accuracy/{c}", f"auc/{c}")
            n_test = len(real_test) if c is None else int((real_test.labels == c).sum())
            rows.append({
                "model": model, "training": training, "class_name": name,
                "n_train": len(data), "n_test": n_test,
                **_triple("accuracy", result[acc]), **_triple("auc", result[auc]),
                "ratio_accuracy": _ratio(result[acc][0], baseline[acc][0]),
                "ratio_auc": _ratio(result[auc][0], baseline[auc][0]),
            })  # fmt: skip
    return pd.DataFrame(rows)


def _triple(name: str, value: tuple[float, float, float]) -> dict[str, float]:
    return {name: value[0], f"{name}_lo": value[1], f"{name}_hi": value[2]}


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference and np.isfinite(reference) else float("nan")
