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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ops.eval.features import FeatureExtractor, clean_resizer, to_uint8_hwc
from ops.layout import DataLayout

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
