"""DMD2's adversarial term: a discriminator on the fake score's bottleneck, real vs generated.

Distribution matching alone can bring the generator only as close to the data as the teacher's
score is. DMD2 (Yin et al. 2024) adds a GAN whose discriminator sees real latents, which the
teacher never sees again after its training: a small head on the fake score UNet's mid-block
features classifies noised latents as real or generated, and both sides train with the
non-saturating loss (Goodfellow et al. 2014), as DMD2 does:

    L_D = E[softplus(D(x_t^gen))] + E[softplus(-D(x_t^real))],   L_G = E[softplus(-D(x_t^gen))],

with x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, t ~ U{0, ..., gan_max_t T - 1}, and D conditioned
on the prompt through the fake UNet's cross-attention. The fake UNet is shared: its denoising
loss and L_D both train it, as in DMD2. The generator's L_G must move the generator only, so it
runs the fake UNet and the head with their parameters detached (:func:`frozen_call`): its
gradient reaches the input and stops there, and one backward per step still updates each
network by its own losses.

Pure functions and one small module; :mod:`ops.distill.dmd` composes them into a step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call


class BottleneckHead(nn.Module):
    """D's classifier on a UNet's mid-block features: norm, SiLU, 3x3 conv, pool, one logit.

    DMD2 attaches a few conv layers and a linear to the fake score's bottleneck; at tiny's
    2x2 bottleneck one 3x3 conv already sees the whole map, so one is enough.
    """

    def __init__(self, channels: int, groups: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(min(groups, channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.GroupNorm(min(groups, channels), channels),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.body(features).squeeze(-1)


def bottleneck_channels(unet: nn.Module) -> int:
    """The mid-block's channel count: the UNet's widest level (diffusers' layout)."""
    return int(unet.config.block_out_channels[-1])


@contextmanager
def bottleneck(unet: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the mid-block outputs of the UNet forwards run inside the block."""
    captured: list[Tensor] = []
    handle = unet.mid_block.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        yield captured
    finally:
        handle.remove()


def frozen_call(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` with its parameters detached: gradients reach the inputs
    and never the module's own parameters (the generator's GAN loss must not train D)."""
    detached = {name: p.detach() for name, p in module.named_parameters()}
    return functional_call(module, detached, args, kwargs)


def discriminator_features(
    unet: nn.Module, x_t: Tensor, t: Tensor, prompt_embeds: Tensor, *, frozen: bool = False
) -> Tensor:
    """The fake UNet's mid-block features of ``x_t`` at ``t`` under the prompt."""
    with bottleneck(unet) as captured:
        if frozen:
            frozen_call(unet, x_t, t, encoder_hidden_states=prompt_embeds)
        else:
            unet(x_t, t, encoder_hidden_states=prompt_embeds)
    return captured[-1]


def discriminator_loss(generated_logits: Tensor, real_logits: Tensor) -> Tensor:
    """L_D: generated latents toward 0, real toward 1 (the non-saturating GAN loss)."""
    return F.softplus(generated_logits).mean() + F.softplus(-real_logits).mean()


def generator_loss(generated_logits: Tensor) -> Tensor:
    """L_G: the generator's non-saturating loss, -log sigmoid(D(x_t^gen))."""
    return F.softplus(-generated_logits).mean()
