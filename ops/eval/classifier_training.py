"""Training the domain classifier and the stage that builds it on the MedImgs train split.

The recipe (AdamW, one-cycle schedule, random shifts) and the stage function live apart from the
network (``ops.eval.classifier``), which the benchmark loads without any of this.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ops.config import stage_config
from ops.eval.classifier import (
    DEFAULT_WIDTHS,
    MODEL_NAME,
    DomainClassifier,
    preprocess,
    save_domain_classifier,
    weights_fingerprint,
)
from ops.eval.features import load_images
from ops.eval.reference import resolve_image_path
from ops.layout import DataLayout
from ops.training.runtime import torch_threads


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def _load_split(layout: DataLayout, rows: Any, resolution: int) -> torch.Tensor:
    if len(rows) == 0:
        return torch.zeros((0, 3, resolution, resolution))
    paths = [resolve_image_path(layout, p) for p in rows["path"]]
    return preprocess(load_images(paths), resolution)


def _random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (edge padding): the one augmentation that is
    safe for medical images (flips would swap laterality, e.g. the heart's side)."""
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


@torch.no_grad()
def _accuracy(
    model: DomainClassifier, x: torch.Tensor, y: torch.Tensor, num_classes: int
) -> tuple[float, list[float | None]]:
    model.eval()
    if len(x) == 0:
        return float("nan"), [None] * num_classes
    device = next(model.parameters()).device
    pred = torch.cat(
        [model(x[i : i + 256].to(device)).argmax(1).cpu() for i in range(0, len(x), 256)]
    )
    per_class: list[float | None] = []
    for c in range(num_classes):
        mask = y == c
        per_class.append(float((pred[mask] == c).float().mean()) if mask.any() else None)
    return float((pred == y).float().mean()), per_class


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    feature_dim: int = 32,
    resolution: int = 64,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    global_pool: str = "avg",
    stem_pool: bool = True,
    epochs: int = 15,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    weight_decay: float = 1e-4,
    shift: int = 4,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_threads: int | None = None,
) -> tuple[DomainClassifier, list[float]]:
    """Cross-entropy training, AdamW with a one-cycle (warm-up, cosine decay) schedule; seeded.

    ``x``: float (N, 3, S, S) in [0, 255]; ``y``: class indices. Returns the model (eval mode)
    and the mean loss of each epoch.
    """
    device = torch.device(device)
    with torch_threads(num_threads):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = DomainClassifier(
            num_classes, feature_dim, resolution, widths, global_pool, stem_pool
        ).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
        steps_per_epoch = max(1, -(-len(x) // batch_size))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=learning_rate, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.2
        )
        losses: list[float] = []
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(x), generator=generator)
            total = 0.0
            for start in range(0, len(x), batch_size):
                idx = order[start : start + batch_size]
                xb = _random_shift(x[idx], shift * resolution // 64, generator).to(device)
                loss = F.cross_entropy(model(xb), y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            losses.append(total / max(1, len(x)))
    return model.eval(), losses


def build_domain_classifier(
    params: dict[str, Any], layout: DataLayout, device: torch.device | str | None = None
) -> dict[str, Any]:
    """Stage: train the domain classifier on the MedImgs train split (holdout rows excluded),
    measure it on the test split, save it to ``models/domain_classifier/``; returns a summary.

    The class list is every ``class_name`` in the manifest (sorted), so a class without
    training rows still has an index; it is listed under ``classes_without_training_rows``.
    """
    import pandas as pd

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = stage_config(params, "benchmark")
    resolution = int(
        cfg.get("classifier_resolution") or stage_config(params, "ingest")["resolution"]
    )
    df = pd.read_parquet(layout.manifest)
    class_names = sorted(df["class_name"].astype(str).unique())
    index = {name: i for i, name in enumerate(class_names)}
    holdout = df["holdout"].fillna(False).astype(bool) if "holdout" in df else False
    train_rows = df[(df["split"] == "train") & ~holdout].sort_values("image_id")
    test_rows = df[df["split"] == "test"].sort_values("image_id")
    if train_rows.empty:
        raise ValueError("the manifest has no non-holdout train rows to train the classifier on")

    t0 = time.perf_counter()
    x_train = _load_split(layout, train_rows, resolution)
    y_train = torch.tensor([index[c] for c in train_rows["class_name"]], dtype=torch.long)
    x_test = _load_split(layout, test_rows, resolution)
    y_test = torch.tensor([index[c] for c in test_rows["class_name"]], dtype=torch.long)
    load_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    model, losses = train_classifier(
        x_train,
        y_train,
        len(class_names),
        feature_dim=int(cfg.get("classifier_feature_dim", 32)),
        resolution=resolution,
        widths=tuple(cfg.get("classifier_widths", DEFAULT_WIDTHS)),
        global_pool=str(cfg.get("classifier_global_pool", "avg")),
        stem_pool=bool(cfg.get("classifier_stem_pool", True)),
        epochs=int(cfg.get("classifier_epochs", 15)),
        batch_size=int(cfg.get("classifier_batch_size", 32)),
        learning_rate=float(cfg.get("classifier_learning_rate", 2e-3)),
        seed=int(cfg["seed"]),
        device=device,
        num_threads=cfg.get("classifier_threads"),
    )
    train_seconds = time.perf_counter() - t0
    with torch_threads(cfg.get("classifier_threads")):
        test_accuracy, per_class = _accuracy(model, x_test, y_test, len(class_names))
        train_accuracy, _ = _accuracy(model, x_train, y_train, len(class_names))
    model = model.cpu()
    trained = set(train_rows["class_name"].astype(str))
    seen = torch.tensor(
        [c in trained for c in test_rows["class_name"].astype(str)], dtype=torch.bool
    )
    with torch_threads(cfg.get("classifier_threads")):
        # holdout classes (never trained) count as misses in test_accuracy; this one leaves them out
        test_accuracy_trained, _ = _accuracy(model, x_test[seen], y_test[seen], len(class_names))
    summary = {
        "test_accuracy": test_accuracy,
        "test_accuracy_trained_classes": test_accuracy_trained,
        "train_accuracy": train_accuracy,
        "per_class_accuracy": dict(zip(class_names, per_class, strict=True)),
        "feature_dim": model.feature_dim,
        "widths": model.config["widths"],
        "global_pool": model.config["global_pool"],
        "stem_pool": model.config["stem_pool"],
        "resolution": resolution,
        "num_classes": len(class_names),
        "n_train": len(train_rows),
        "n_test": len(test_rows),
        "n_holdout_excluded": int(((df["split"] == "train") & holdout).sum()),
        "epochs": len(losses),
        "final_train_loss": losses[-1] if losses else None,
        "train_seconds": round(train_seconds, 3),
        "load_seconds": round(load_seconds, 3),
        "classes_without_training_rows": [c for c in class_names if c not in trained],
        "fingerprint": weights_fingerprint(model),
    }
    save_domain_classifier(model, class_names, layout.model(MODEL_NAME), {"summary": summary})
    return summary
