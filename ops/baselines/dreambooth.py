"""DreamBooth-style fine-tuning of the teacher's UNet: the few-shot baseline of the benchmark.

DreamBooth (Ruiz et al., CVPR 2023) binds a few images of a subject to a rare-token identifier
("a sks chest X-ray of a human chest, ...") by fine-tuning the diffusion model on them, and keeps
the model from forgetting the class (language drift, loss of diversity) with *class-specific
prior preservation*: before training, the frozen model generates images from the plain class
prompt, and training also fits those. On a batch of instance latents x and prior latents x_pr,
with noise eps ~ N(0, I), timesteps t and their noised latents z_t:

    L = E || eps_theta(z_t, t, c_sks) - eps ||^2  +  lambda * E || eps_theta(z'_t, t', c_cls) - eps' ||^2

(the target is the velocity instead of eps for v-prediction schedulers). As in diffusers'
``train_dreambooth.py``, both halves run through the UNet as one batch [instance; prior] and the
loss is computed on the two chunks. Everything here works on latents (already multiplied by the
VAE scaling factor) and cached prompt embeddings: pure torch + diffusers, no accelerate, no
Dagster. Prior latents come from the frozen teacher's sampler (the class prompt, before
``finetune_dreambooth`` is called).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def prior_preservation_loss(
    model_pred: Tensor, target: Tensor, prior_weight: float, num_instance: int | None = None
) -> Tensor:
    """mse(pred_instance, target_instance) + prior_weight * mse(pred_prior, target_prior).

    ``model_pred`` and ``target`` are batches concatenated [instance; prior]; the split is at
    ``num_instance`` (default: half, diffusers' ``torch.chunk(x, 2)``). Means are over all
    elements of each half, in float32 (as diffusers computes them under mixed precision).
    """
    if model_pred.shape != target.shape:
        raise ValueError(f"prediction {model_pred.shape} and target {target.shape} differ")
    n = model_pred.shape[0]
    k = n // 2 if num_instance is None else int(num_instance)
    if num_instance is None and n % 2:
        raise ValueError(f"batch of {n} cannot be split into equal [instance; prior] halves")
    if not 0 < k <= n:
        raise ValueError(f"num_instance={k} out of range for a batch of {n}")
    loss = F.mse_loss(model_pred[:k].float(), target[:k].float(), reduction="mean")
    if k == n:
        return loss
    prior = F.mse_loss(model_pred[k:].float(), target[k:].float(), reduction="mean")
    return loss + prior_weight * prior


def diffusion_target(noise_scheduler, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    """What the UNet should predict: eps, or the velocity for v-prediction schedulers."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {kind!r}")


def dreambooth_loss(
    unet: nn.Module,
    noise_scheduler,
    latents: Tensor,
    embeds: Tensor,
    noise: Tensor,
    timesteps: Tensor,
    num_instance: int,
    prior_weight: float,
) -> Tensor:
    """The loss of one concatenated [instance; prior] batch with given noise and timesteps."""
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    pred = unet(noisy, timesteps, encoder_hidden_states=embeds).sample
    target = diffusion_target(noise_scheduler, latents, noise, timesteps)
    return prior_preservation_loss(pred, target, prior_weight, num_instance)


def _per_sample(embeds: Tensor, n: int) -> Tensor:
    """Prompt embeddings (L, D), (1, L, D) or (n, L, D) -> (n, L, D)."""
    if embeds.ndim == 2:
        embeds = embeds[None]
    if embeds.shape[0] == 1:
        return embeds.expand(n, *embeds.shape[1:])
    if embeds.shape[0] != n:
        raise ValueError(f"{embeds.shape[0]} prompt embeddings for {n} latents")
    return embeds


def finetune_dreambooth(
    unet: nn.Module,
    noise_scheduler,
    instance_latents: Tensor,
    instance_embeds: Tensor,
    prior_latents: Tensor,
    prior_embeds: Tensor,
    steps: int,
    lr: float,
    prior_weight: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 4,
    max_grad_norm: float = 1.0,
) -> tuple[nn.Module, list[float]]:
    """Fine-tune ``unet`` in place with the prior-preservation loss; returns it (eval mode) and
    the loss of every step.

    Each step draws ``b = min(batch_size, #instances, #priors)`` instance and prior latents
    without replacement, one timestep and one noise tensor per sample, all from ``generator``
    (CPU), so a seed fixes the run. AdamW, gradient norm clipped to ``max_grad_norm``.
    """
    generator = generator or torch.Generator().manual_seed(0)
    param = next(unet.parameters())
    device, dtype = param.device, param.dtype
    n_inst, n_prior = len(instance_latents), len(prior_latents)
    inst_embeds = _per_sample(instance_embeds, n_inst)
    pr_embeds = _per_sample(prior_embeds, n_prior)
    b = max(1, min(batch_size, n_inst, n_prior))
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr)
    losses: list[float] = []
    unet.train()
    for _ in range(steps):
        i = torch.randperm(n_inst, generator=generator)[:b]
        j = torch.randperm(n_prior, generator=generator)[:b]
        latents = torch.cat([instance_latents[i], prior_latents[j]])
        embeds = torch.cat([inst_embeds[i], pr_embeds[j]])
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, num_train_timesteps, (2 * b,), generator=generator)
        loss = dreambooth_loss(
            unet,
            noise_scheduler,
            latents.to(device, dtype),
            embeds.to(device, dtype),
            noise.to(device, dtype),
            timesteps.to(device),
            b,
            prior_weight,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
    unet.eval()
    return unet, losses
