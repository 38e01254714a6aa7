"""A perceptual loss trained here: the VAE's term that keeps a few-pixel finding.

SD's first stage adds LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep
Features as a Perceptual Metric") to its L1: distances between the unit-normalised feature
maps of an ImageNet network, which respond to edges and textures a per-pixel loss averages
away. No ImageNet network can be downloaded here, and its features would not know a kidney
stone anyway. So the tiny presets train a small network of their own on the MedImgs *train*
split to tell the classes apart (cross-entropy, random shifts) before the VAE trains; what
separates a kidney with a stone from one without is then what its feature maps respond to,
and the VAE is penalised for every such response its reconstruction loses:

    d(x, x_hat) = sum_l mean_{c,h,w} (phi_l(x) / |phi_l(x)| - phi_l(x_hat) / |phi_l(x_hat)|)^2

(LPIPS's eq. 1 with unit channel weights; |.| the norm over channels at each position).

It is not the evaluator: the benchmark's domain classifier (``ops.eval``) is another network,
trained separately, and the fixed per-family finding readers of ``ops.eval.findings``, which
``autoencoder_fidelity`` also reports on reconstructions, have no weights to be fitted to.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ops.training.image_data import to_model_range

DEFAULT_WIDTHS = (16, 32, 64)


class FeatureNet(nn.Module):
    """Conv stages at full, 1/2 and 1/4 resolution, then avg+max pooling and a linear head.

    The first stage keeps full resolution (a one-pixel finding is not strided away) and the
    head pools by max as well as average, as the domain classifier does.
    """

    def __init__(self, num_classes: int, widths: Sequence[int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        stages, in_ch = [], 3
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    nn.Conv2d(in_ch, width, 3, stride=stride, padding=1),
                    nn.GroupNorm(min(8, width // 4), width),
                    nn.SiLU(),
                    nn.Conv2d(width, width, 3, padding=1),
                    nn.SiLU(),
                )
            )
            in_ch = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(2 * in_ch, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature map of every stage, for ``x`` in [-1, 1] (the VAE's range)."""
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.features(x)[-1]
        pooled = torch.cat([last.mean((2, 3)), last.amax((2, 3))], dim=1)
        return self.head(pooled)


def perceptual_distance(net: FeatureNet, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the summed per-stage distances of unit-normalised features."""
    total = recon.new_zeros(())
    for a, b in zip(net.features(recon), net.features(target), strict=True):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-6)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-6)
        total = total + (a - b).pow(2).sum(1).mean()
    return total


def _shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """One random translation of up to ``pad`` pixels per batch (reflect padding)."""
    if pad <= 0:
        return x
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def train_feature_net(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    seed: int = 0,
) -> tuple[FeatureNet, float]:
    """Train on ``images`` (float, [-1, 1], N x 3 x S x S) and class ``labels``; returns the
    frozen network (eval mode) and its accuracy on the last epoch's batches."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = FeatureNet(num_classes, widths)
    opt = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps = max(1, epochs * -(-len(images) // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, learning_rate, total_steps=steps)
    correct = 0
    for _ in range(epochs):
        order, correct = torch.randperm(len(images), generator=generator), 0
        for start in range(0, len(images), batch_size):
            idx = order[start : start + batch_size]
            logits = net(_shift(images[idx], 4 * images.shape[-1] // 64, generator))
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == labels[idx]).sum())
    return net.eval().requires_grad_(False), correct / max(1, len(images))


def perceptual_net(
    cfg: dict[str, Any], rows: Any, images: torch.Tensor
) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    """The frozen feature network of the VAE's perceptual term, trained on the VAE's own
    training rows (a manifest frame) and their class labels for ``perceptual_epochs``, or None
    without that term (``perceptual_weight`` 0). ``images``: uint8 N x 3 x S x S. Seeded: a
    resumed run trains the same network again. Under a launch, call it through
    ``on_main_process``: one rank trains it, the others receive it."""
    if not float(cfg.get("perceptual_weight", 0.0)):
        return None, {}
    t0 = time.perf_counter()
    names = sorted(rows["class_name"].astype(str).unique())
    labels = torch.tensor([names.index(c) for c in rows["class_name"].astype(str)])
    net, accuracy = train_feature_net(
        to_model_range(images),
        labels,
        len(names),
        epochs=int(cfg.get("perceptual_epochs", 6)),
        seed=int(cfg["seed"]),
    )
    return net, {
        "perceptual_train_accuracy": accuracy,
        "perceptual_seconds": time.perf_counter() - t0,
    }
