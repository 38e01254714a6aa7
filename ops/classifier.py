"""The domain classifier: a small CNN on MedImgs whose penultimate layer is the FID feature space.

Why a domain extractor: the ``tiny`` preset runs offline, where clean-fid's Inception weights
cannot be fetched, and ImageNet features say little about X-ray phantoms anyway. A CNN trained
here to tell the MedImgs classes apart embeds exactly the differences a reader of the benchmark
cares about; the same network also measures *class fidelity* (does a generated "chest X-ray,
cardiomegaly" look like that class to the classifier?).

Architecture: a 3x3 stride-2 conv stem with max-pool (4x down: at full resolution the first
layers would cost most of the compute) and three 3x3 conv blocks (GroupNorm, ReLU, 2x2 max-pool
between them), global average pooling, a linear embedding of ``feature_dim`` units (the features; pre-activation, so
no unit is clipped to a constant 0 that would make the covariance singular), then ReLU and a
linear head over the classes. Global pooling makes it resolution-agnostic; inputs are resized
to ``classifier_resolution`` with clean-fid's resizer, for training and for features alike.

Two options exist for findings of a pixel or two at 64 px (a fracture gap, a malaria ring
form, a kidney stone): ``stem_pool=False`` drops the max-pool after the stem, so the second
block still sees 32x32, and ``global_pool="avgmax"`` concatenates global max pooling to the
average, so a small local finding is not diluted by the rest of the image. Measured on 64 px
phantoms (200 train images a class, 20 epochs, widths 8-16-32-64): test accuracy 0.77 (plain)
-> 0.86 (avgmax) -> 0.99 (avgmax, no stem pool), malaria 0.0 -> 0.93; at 160 a class or 14
epochs the malaria pair is not learned (0.4-0.5).

Why ``feature_dim`` 32 by default (Inception has 2048): the Frechet distance needs a covariance
estimate with d(d+1)/2 parameters, the sample covariance has rank <= n - 1, and the upward bias
of FID grows with d/n. Per-class reference sets of the small presets hold tens of images, so a
32-d space keeps FID finite and comparable where 2048-d would be pure noise.
The tiny preset uses 16, measured: FID between two disjoint real draws of one class at
n = 64 (the benchmark's per-class n), over its median between-class FID, was 0.0011 / 0.0012 /
0.0017 / 0.0018 for d = 8 / 16 / 32 / 64 (coefficient of variation 1.0 / 0.72 / 0.71 / 0.85
over 16 classes x 3 draws): 16 is as unbiased as 8 and as stable as 32.

Input convention (clean-fid's ``custom_feat_extractor``): float ``(B, 3, S, S)`` in [0, 255]
(uint8 accepted), scaled to [-1, 1] inside the model.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ops.config import stage_config
from ops.layout import DataLayout
from ops.metrics import (
    FeatureExtractor,
    clean_resizer,
    load_images,
    resolve_image_path,
    to_uint8_hwc,
)
from ops.training.runtime import torch_threads

MODEL_NAME = "domain_classifier"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_WIDTHS = (16, 32, 64, 64)
GLOBAL_POOLS = ("avg", "avgmax")


def _groups(width: int) -> int:
    """GroupNorm groups: normalisation that does not depend on the batch, so features of an
    image are the same whatever it is batched with, and eval equals train behaviour (BatchNorm's
    running statistics barely settle in the few hundred steps of the small presets)."""
    return next(g for g in (8, 4, 2, 1) if width % g == 0)


class DomainClassifier(nn.Module):
    """Conv trunk -> global average pool -> ``feature_dim`` embedding -> ReLU -> class logits."""

    def __init__(
        self,
        num_classes: int,
        feature_dim: int = 32,
        resolution: int = 64,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        global_pool: str = "avg",
        stem_pool: bool = True,
    ) -> None:
        super().__init__()
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        self.config = {
            "num_classes": int(num_classes),
            "feature_dim": int(feature_dim),
            "resolution": int(resolution),
            "widths": [int(w) for w in widths],
            "global_pool": global_pool,
            "stem_pool": bool(stem_pool),
        }
        layers: list[nn.Module] = []
        in_ch = 3
        for i, width in enumerate(widths):
            # stem: strided conv + pool (4x down, where most of the compute would go);
            # then conv blocks with a 2x2 max-pool between them
            layers += [
                nn.Conv2d(in_ch, width, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                nn.GroupNorm(_groups(width), width),
                nn.ReLU(inplace=True),
            ]
            if i < len(widths) - 1 and (i > 0 or stem_pool):
                layers.append(nn.MaxPool2d(2))
            in_ch = width
        self.trunk = nn.Sequential(*layers)
        self.embed = nn.Linear(in_ch * (2 if global_pool == "avgmax" else 1), feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.config["feature_dim"]

    @property
    def resolution(self) -> int:
        return self.config["resolution"]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled trunk output of images in [0, 255]: the average of each channel,
        and with ``global_pool="avgmax"`` also its maximum (a finding of a pixel or two)."""
        maps = self.trunk(x.float() / 127.5 - 1.0)
        pooled = maps.mean(dim=(2, 3))
        if self.config["global_pool"] == "avgmax":
            pooled = torch.cat([pooled, maps.amax(dim=(2, 3))], dim=1)
        return pooled

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of images in [0, 255] (float or uint8), shape (B, feature_dim)."""
        return self.embed(self.pooled(x))

    def logits_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.features(x))


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): equal before and after a
    save/load round trip, different after any retraining."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.dtype == torch.bfloat16:
            t = t.float()
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


class _Features(nn.Module):
    """The callable given to clean-fid: checks the input size, returns features (no grad)."""

    def __init__(self, model: DomainClassifier) -> None:
        super().__init__()
        self.model = model

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.model.resolution
        if x.shape[-2:] != (size, size):
            raise ValueError(
                f"domain extractor expects {size}x{size} inputs, got {tuple(x.shape[-2:])}: pass "
                "FeatureExtractor.resize (clean-fid's custom_fn_resize) to resize first"
            )
        device = next(self.model.parameters()).device
        return self.model.features(x.to(device))


def feature_extractor(model: DomainClassifier) -> FeatureExtractor:
    """The classifier's penultimate layer as a clean-fid custom feature extractor."""
    model.eval()
    return FeatureExtractor(
        name="domain",
        fn=_Features(model),
        input_size=model.resolution,
        dim=model.feature_dim,
        fingerprint=f"domain:{weights_fingerprint(model)}",
        resize=clean_resizer(model.resolution),
    )


def preprocess(images: np.ndarray | torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 images (NHWC array / NCHW tensor, or float in [-1, 1]) -> float (B, 3, S, S) in
    [0, 255], resized the clean-fid way."""
    resize = clean_resizer(resolution)
    arr = to_uint8_hwc(images)
    return torch.from_numpy(np.stack([resize(img).transpose(2, 0, 1) for img in arr]))


@torch.no_grad()
def predict_from_features(model: DomainClassifier, feats: np.ndarray | torch.Tensor) -> np.ndarray:
    """Class indices from already-extracted features (saves a second pass when streaming)."""
    device = next(model.parameters()).device
    logits = model.logits_from_features(torch.as_tensor(feats, dtype=torch.float32, device=device))
    return logits.argmax(dim=1).cpu().numpy()


@torch.no_grad()
def classify(
    model: DomainClassifier, images: np.ndarray | torch.Tensor, batch_size: int = 256
) -> np.ndarray:
    """Predicted class indices (into the saved ``class_names``) of a batch of images."""
    model.eval()
    x = preprocess(images, model.resolution)
    device = next(model.parameters()).device
    preds = [
        model(x[i : i + batch_size].to(device)).argmax(1).cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------
def save_domain_classifier(
    model: DomainClassifier,
    class_names: Sequence[str],
    directory: Path,
    extra: dict[str, Any] | None = None,
) -> None:
    """``model.safetensors`` + ``config.json`` (architecture, class names, training summary)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    config = {**model.config, "class_names": list(class_names), **(extra or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def load_domain_classifier(
    layout: DataLayout, device: torch.device | str = "cpu", directory: Path | None = None
) -> tuple[DomainClassifier, list[str]]:
    """The saved classifier (eval mode) and its class names, index-aligned with its logits."""
    directory = directory or layout.model(MODEL_NAME)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"no domain classifier at {directory}; build it first (build_domain_classifier)"
        )
    cfg = json.loads(cfg_path.read_text())
    model = DomainClassifier(
        cfg["num_classes"],
        cfg["feature_dim"],
        cfg["resolution"],
        cfg["widths"],
        global_pool=cfg.get("global_pool", "avg"),
        stem_pool=cfg.get("stem_pool", True),
    )
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return model.to(device).eval(), list(cfg["class_names"])


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
