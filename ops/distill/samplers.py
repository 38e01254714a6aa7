"""The samplers of a consistency student: small pure functions with one signature.

:func:`consistency_sample` is the sampler of the latent consistency paper (Luo et al. 2023,
Algorithm 3; Song et al. 2023, Algorithm 1), written out as diffusers' ``LCMScheduler`` +
``LatentConsistencyModelPipeline`` run it, so the two give the same latents for the same seed:

    timesteps: the k-skipped training grid t_n = (n + 1) k - 1 (``original_inference_steps``
               = T / k points), ``steps`` of them at evenly spaced indices from the top;
    for each t_i:  denoised = f_theta(z, w, c, t_i)                       (c_skip z + c_out x0)
                   z = sqrt(a_{t_{i+1}}) denoised + sqrt(1 - a_{t_{i+1}}) noise   (not after the last)
    return denoised

Guidance: ``w`` is the LCM paper's guidance weight, the one the student was distilled with
(x0 = x0_c + w (x0_c - x0_u)). Diffusers' (Imagen-style) ``guidance_scale`` is w + 1, and its
LCM pipeline embeds ``guidance_scale - 1``; the user-facing functions (``ops.distill.sampling.generate``,
``llcm generate --guidance``, the registry's pyfunc) take ``guidance_scale`` like diffusers.

:func:`tcd_sample` is TCD's strategic stochastic sampling (Zheng et al. 2024, "Trajectory
Consistency Distillation"), written out as diffusers' ``TCDScheduler.step``: from z_t the
student's prediction jumps (DDIM) to s = floor((1 - gamma) t_next), below the next timestep,
and fresh noise carries it forward to t_next:

    z_s      = sqrt(a_s) x0_hat + sqrt(1 - a_s) eps_hat
    z_next   = sqrt(a_next / a_s) z_s + sqrt(1 - a_next / a_s) noise     (not after the last)

gamma = 1 re-noises from (almost) x0 as LCM does; gamma = 0 is deterministic, one DDIM jump to
the next timestep: :func:`phased_sample`, the sampler of a phased student (PCM,
``distill.phased``). Any consistency student can be sampled at any gamma (``generate(gamma=)``,
``llcm generate --gamma``, benchmark model ``<student>-tcd<gamma>``: a dash, as MLflow metric
names allow no "+"); stock diffusers does the same with
``StableDiffusionPipeline(**pipe.components)``, a ``TCDScheduler`` from the saved scheduler
config and ``eta=gamma``.

Noise is drawn with diffusers' ``randn_tensor`` from one ``torch.Generator`` in the pipeline's
order (initial latents unless given, then one draw per intermediate step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ops.distill.consistency import consistency_function, ddim_jump, guidance_embedding
from ops.distill.schedule import lcm_timesteps
from ops.distill.solvers import append_dims


@torch.no_grad()
def consistency_sample(
    unet: nn.Module,
    prompt_embeds: Tensor,
    steps: int,
    w: float,
    generator: torch.Generator | None = None,
    *,
    alphas_cumprod: Tensor,
    original_steps: int,
    latents: Tensor | None = None,
    latent_size: tuple[int, int] | None = None,
    sigma_data: float = 0.5,
    timestep_scaling: float = 10.0,
    prediction_type: str = "epsilon",
    timesteps: Sequence[int] | None = None,
) -> Tensor:
    """Multistep consistency sampling; returns the final denoised latents (batch of prompts).

    ``unet`` is the student (a UNet2DConditionModel with ``time_cond_proj_dim``),
    ``prompt_embeds`` one row per image, ``w`` the LCM guidance weight (= guidance_scale - 1),
    ``alphas_cumprod`` the teacher's schedule, ``original_steps`` = T / k. ``latents`` are the
    initial noise z_T; drawn from ``generator`` when not given, of spatial size ``latent_size``
    (default: the UNet's ``sample_size``). ``timesteps`` replaces LCMScheduler's ``steps``-step
    schedule by an explicit one, as diffusers' ``timesteps=`` argument does; the first is
    still fed pure noise.
    """
    from diffusers.utils.torch_utils import randn_tensor

    device, dtype = prompt_embeds.device, prompt_embeds.dtype
    if timesteps is None:
        schedule = lcm_timesteps(steps, original_steps, len(alphas_cumprod)).to(device)
    else:
        schedule = torch.as_tensor(list(timesteps), dtype=torch.long, device=device)
    alphas_cumprod = alphas_cumprod.to(device)
    z, w_emb = _start(unet, prompt_embeds, w, generator, latents, latent_size)

    denoised = z
    for i, t in enumerate(schedule):
        out = unet(z, t, timestep_cond=w_emb, encoder_hidden_states=prompt_embeds).sample
        denoised = consistency_function(
            out,
            z,
            t,
            alphas_cumprod,
            sigma_data=sigma_data,
            timestep_scaling=timestep_scaling,
            prediction_type=prediction_type,
        )
        if i < len(schedule) - 1:
            a_next = append_dims(alphas_cumprod[schedule[i + 1]], z.ndim).to(dtype)
            noise = randn_tensor(z.shape, generator=generator, device=device, dtype=dtype)
            z = a_next.sqrt() * denoised + (1 - a_next).sqrt() * noise
    return denoised


def check_gamma(gamma: float) -> float:
    """TCD's stochasticity as a float, refused outside [0, 1] (``TCDScheduler`` asserts the
    same); the one check behind ``tcd_sample``, ``llcm generate --gamma`` and the benchmark's
    ``-tcd<gamma>`` rows."""
    if not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    return float(gamma)


@torch.no_grad()
def tcd_sample(
    unet: nn.Module,
    prompt_embeds: Tensor,
    steps: int,
    w: float,
    generator: torch.Generator | None = None,
    *,
    gamma: float,
    alphas_cumprod: Tensor,
    original_steps: int,
    latents: Tensor | None = None,
    latent_size: tuple[int, int] | None = None,
    prediction_type: str = "epsilon",
    timesteps: Sequence[int] | None = None,
) -> Tensor:
    """TCD sampling at stochasticity ``gamma`` in [0, 1] (module docstring); returns the final
    latents, which the last step leaves at t = 0 (a_0 < 1), as ``TCDScheduler`` does. Same
    arguments as :func:`consistency_sample`; noise is drawn only when gamma > 0, one draw per
    intermediate step, so gamma = 0 uses the generator for z_T alone."""
    from diffusers.utils.torch_utils import randn_tensor

    gamma = check_gamma(gamma)
    device, dtype = prompt_embeds.device, prompt_embeds.dtype
    batch = prompt_embeds.shape[0]
    if timesteps is None:
        schedule = lcm_timesteps(steps, original_steps, len(alphas_cumprod)).to(device)
    else:
        schedule = torch.as_tensor(list(timesteps), dtype=torch.long, device=device)
    nexts = torch.cat([schedule[1:], schedule.new_zeros(1)])
    alphas_cumprod = alphas_cumprod.to(device)
    z, w_emb = _start(unet, prompt_embeds, w, generator, latents, latent_size)
    for i, (t, t_next) in enumerate(zip(schedule, nexts, strict=True)):
        s = torch.floor((1 - float(gamma)) * t_next.cpu()).long().to(device)  # TCDScheduler's
        out = unet(z, t, timestep_cond=w_emb, encoder_hidden_states=prompt_embeds).sample
        z = ddim_jump(out, z, t.expand(batch), s.expand(batch), alphas_cumprod, prediction_type)
        if gamma > 0 and i < len(schedule) - 1:
            ratio = append_dims(alphas_cumprod[t_next] / alphas_cumprod[s], z.ndim).to(dtype)
            noise = randn_tensor(z.shape, generator=generator, device=device, dtype=dtype)
            z = ratio.sqrt() * z + (1 - ratio).sqrt() * noise
    return z


def phased_sample(
    unet: nn.Module,
    prompt_embeds: Tensor,
    steps: int,
    w: float,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> Tensor:
    """Deterministic phased sampling, a phased student's own (PCM): :func:`tcd_sample` at
    gamma = 0, one DDIM jump of the student per step to the next timestep, the last to t = 0."""
    return tcd_sample(unet, prompt_embeds, steps, w, generator, gamma=0.0, **kwargs)


def _start(
    unet: nn.Module,
    prompt_embeds: Tensor,
    w: float,
    generator: torch.Generator | None,
    latents: Tensor | None,
    latent_size: tuple[int, int] | None,
) -> tuple[Tensor, Tensor]:
    """Both samplers' start: z_T (drawn first from ``generator``, as the pipelines do, unless
    given) and the embedding of w, on the prompts' device and dtype."""
    from diffusers.utils.torch_utils import randn_tensor

    device, dtype = prompt_embeds.device, prompt_embeds.dtype
    batch = prompt_embeds.shape[0]
    if latents is None:
        size = latent_size or (unet.config.sample_size, unet.config.sample_size)
        shape = (batch, unet.config.in_channels, *size)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    w_emb = guidance_embedding(torch.full((batch,), float(w)), unet.config.time_cond_proj_dim)
    return latents.to(device, dtype), w_emb.to(device, dtype)
