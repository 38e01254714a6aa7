"""Distribution matching distillation (DMD2): the math of one training step.

Yin et al., "One-step Diffusion with Distribution Matching Distillation" (DMD, CVPR 2024) and
"Improved Distribution Matching Distillation for Fast Image Synthesis" (DMD2, NeurIPS 2024),
train a few-step generator G so that the distribution of its outputs matches the teacher's,
not so that it follows the teacher's ODE. The gradient of the reverse KL between the two
distributions, diffused to time t, is the difference of their scores (DMD's distribution matching gradient):

    grad_theta KL = E_{t, eps} [ (s_fake(x_t, t) - s_real(x_t, t)) dG/dtheta ],
    x = G(z),  x_t = sqrt(a_t) x + sqrt(1 - a_t) eps,

with s_real the frozen, guided teacher and s_fake a second diffusion model trained at the same
time, by plain denoising, on the generator's own outputs: it tracks the score of what G makes
now. In x0 form (mu = the denoiser's x0 estimate, s ~ (sqrt(a_t) mu - x_t) / (1 - a_t)) the
direction is mu_fake - mu_real, normalised per sample by mean|x - mu_real| (DMD's
weighting w_t). DMD2 drops DMD's regression loss and keeps training stable with a two
time-scale update rule: the fake score takes several steps per generator step.

Here G is a consistency student (``ops.distill.consistency``: f = c_skip x + c_out x0_hat,
eq. 11 of the LLCM paper, guidance w embedded), so it is sampled exactly as LCM is, by
diffusers' ``LatentConsistencyModelPipeline``. Multi-step generation follows DMD2's backward
simulation: the generator is trained at every timestep its few-step sampler visits, on inputs
made by running itself from noise down to that timestep (never on noised real latents, which
the sampler never sees).

Pure functions of tensors and modules; the trainer is :mod:`ops.distill.dmd_stage`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ops.distill.adversarial import (
    BottleneckHead,
    bottleneck_channels,
    discriminator_features,
    discriminator_loss,
    frozen_call,
    generator_loss,
)
from ops.distill.consistency import consistency_function, guided_teacher, split_prediction
from ops.distill.schedule import gen_device, noise_to, randn
from ops.distill.solvers import append_dims

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x_t, t) -> x0 estimate


def generator_x0(
    generator: nn.Module,
    z_t: Tensor,
    t: Tensor,
    w_emb: Tensor,
    prompt_embeds: Tensor,
    alphas_cumprod: Tensor,
    scalings: Mapping[str, float],
) -> Tensor:
    """The generator's output at ``t``: the consistency function f(z_t, w, c, t) (eq. 11)."""
    out = generator(z_t, t, timestep_cond=w_emb, encoder_hidden_states=prompt_embeds).sample
    return consistency_function(out, z_t, t, alphas_cumprod, **scalings)


def backward_simulation(
    generator: nn.Module,
    noise: Tensor,
    timesteps: Sequence[int],
    stop: Tensor,
    w_emb: Tensor,
    prompt_embeds: Tensor,
    alphas_cumprod: Tensor,
    scalings: Mapping[str, float],
    rng: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The generator's own input at sampler step ``stop`` (per sample), and that timestep.

    Runs the few-step sampler (LCM's multistep sampling: predict x0, noise it afresh to the
    next timestep) from pure noise at ``timesteps[0]`` for ``stop`` steps, without gradient
    (DMD2's "backward simulation"). Samples with ``stop = 0`` keep their noise.

    Each step evaluates the generator only on the samples still simulating (about half the
    batch at 4 slots, once the one-step slot takes its share, against all of it every step),
    while the fresh noise is still drawn for the whole batch, so the random stream is the
    same whichever samples stop where.
    """
    z = noise.clone()  # updated in place, sample by sample; the caller's noise stays as it is
    grid = torch.as_tensor(list(timesteps), device=noise.device)
    with torch.no_grad():
        for step in range(int(stop.max().item()) if len(stop) else 0):
            active = (stop > step).nonzero(as_tuple=True)[0]
            t = grid[step].expand(len(active))
            x0 = generator_x0(
                generator,
                z[active],
                t,
                w_emb[active],
                prompt_embeds[active],
                alphas_cumprod,
                scalings,
            )
            fresh = randn(z.shape, rng, z.device, z.dtype)
            z[active] = noise_to(
                x0, fresh[active], grid[step + 1].expand(len(active)), alphas_cumprod
            )
    return z, grid[stop]


def generator_inputs(
    generator: nn.Module,
    noise: Tensor,
    timesteps: Sequence[int],
    one_step_timestep: int | None,
    w_emb: Tensor,
    prompt_embeds: Tensor,
    alphas_cumprod: Tensor,
    scalings: Mapping[str, float],
    rng: torch.Generator | None = None,
    one_step_share: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Each sample's generator input and timestep: one of the few-step sampler's slots, drawn
    uniformly (:func:`backward_simulation`), or, with ``one_step_timestep``, one more slot:
    pure noise presented as timestep ``one_step_timestep``, for a share ``one_step_share`` of
    the samples (None: an equal share with each of the sampler's slots).

    That slot is DMD2's one-step generator (its SDXL model is sampled with ``timesteps=[399]``):
    the consistency function at t turns an epsilon prediction into x0 through
    1 / sqrt(abar_t), 14.6 at t = 999 and 5.2 at t = 799, so a one-step generator started at
    999 amplifies every error in its epsilon 14.6-fold. Started lower, the same pure noise
    needs less amplification; DMD only asks that its outputs match the teacher's. (Too low
    and the start is far from what the initial student learnt at that t: on tiny's validation
    draw 799 beat 599, 699, 859 and 919; the README has the table.)
    """
    batch, where = len(noise), gen_device(rng)
    stop = torch.randint(0, len(timesteps), (batch,), generator=rng, device=where)
    stop = stop.to(noise.device)
    if one_step_timestep is None:
        one_step = torch.zeros_like(stop, dtype=torch.bool)
    else:
        share = 1.0 / (len(timesteps) + 1) if one_step_share is None else float(one_step_share)
        one_step = (torch.rand(batch, generator=rng, device=where) < share).to(noise.device)
    z, t = backward_simulation(
        generator,
        noise,
        timesteps,
        torch.where(one_step, 0, stop),
        w_emb,
        prompt_embeds,
        alphas_cumprod,
        scalings,
        rng,
    )
    if one_step_timestep is not None:
        t = torch.where(one_step, int(one_step_timestep), t)
    return z, t


def distribution_matching_loss(
    x0: Tensor, real: Denoiser, fake: Denoiser, t: Tensor, noise: Tensor, alphas_cumprod: Tensor
) -> Tensor:
    """The generator's DMD loss: its gradient w.r.t. x0 is DMD's score difference.

    ``real`` is the guided teacher's x0 estimate, ``fake`` the fake score's; both run without
    gradient. The per-sample weight 1 / mean|x0 - mu_real| is DMD's. Written as
    0.5 ||x0 - sg(x0 - grad)||^2, whose gradient is ``grad`` (as in the DMD2 reference).
    """
    with torch.no_grad():
        x_t = noise_to(x0.detach(), noise, t, alphas_cumprod)
        mu_real = real(x_t, t)
        mu_fake = fake(x_t, t)
        dims = tuple(range(1, x0.ndim))
        weight = (x0.detach() - mu_real).abs().mean(dim=dims, keepdim=True).clamp_min(1e-8)
        grad = torch.nan_to_num((mu_fake - mu_real) / weight)
    return 0.5 * F.mse_loss(x0.float(), (x0 - grad).detach().float(), reduction="mean")


def denoising_loss(
    unet: nn.Module,
    x0: Tensor,
    prompt_embeds: Tensor,
    t: Tensor,
    noise: Tensor,
    alphas_cumprod: Tensor,
    prediction_type: str = "epsilon",
) -> Tensor:
    """The fake score's loss on the generator's (detached) outputs: the teacher's own objective
    (epsilon, v or sample prediction, MSE), conditioned on the prompt, without guidance."""
    x0 = x0.detach()
    x_t = noise_to(x0, noise, t, alphas_cumprod)
    pred = unet(x_t, t, encoder_hidden_states=prompt_embeds).sample
    a = append_dims(alphas_cumprod.to(x0.device)[t].to(x0.dtype), x0.ndim)
    target = {
        "epsilon": noise,
        "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0,
        "sample": x0,
    }[prediction_type]
    return F.mse_loss(pred.float(), target.float())


def unet_denoiser(
    unet: nn.Module, prompt_embeds: Tensor, alphas_cumprod: Tensor, prediction_type: str
) -> Denoiser:
    """``(x_t, t) -> x0`` of a conditional epsilon (or v) UNet, no guidance: the fake score."""

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        out = unet(x_t, t, encoder_hidden_states=prompt_embeds).sample
        x0, _ = split_prediction(out, x_t, alphas_cumprod.to(x_t.device)[t], prediction_type)
        return x0

    return denoise


def guided_denoiser(
    teacher: nn.Module,
    prompt_embeds: Tensor,
    uncond_embeds: Tensor,
    w: Tensor,
    alphas_cumprod: Tensor,
    prediction_type: str,
) -> Denoiser:
    """``(x_t, t) -> x0`` of the teacher with LCM-convention guidance w: the real score."""
    model = guided_teacher(
        teacher, prompt_embeds, uncond_embeds, w, alphas_cumprod, prediction_type
    )
    return lambda x_t, t: model(x_t, t)[0]


def uniform_timesteps(
    batch: int, low: int, high: int, rng: torch.Generator | None, device: torch.device | str
) -> Tensor:
    """t ~ U{low, ..., high - 1}, one per sample (DMD2 draws t in [0.02 T, 0.98 T])."""
    t = torch.randint(low, high, (batch,), generator=rng, device=gen_device(rng))
    return t.to(device)


def gan_timesteps(
    cfg: Mapping[str, Any],
    batch: int,
    T: int,
    rng: torch.Generator | None,
    device: torch.device | str,
) -> Tensor:
    """D's noise levels, t ~ U{0, ..., gan_max_t T - 1}: near T real and generated latents
    look alike, so ``gan_max_t`` < 1 keeps D on the levels where they differ."""
    return uniform_timesteps(
        batch, 0, max(1, int(float(cfg.get("gan_max_t", 1.0)) * T)), rng, device
    )


def dmd_losses(
    pair: Any,
    teacher: nn.Module,
    latents_shape: Sequence[int],
    prompt_embeds: Tensor,
    uncond_embeds: Tensor,
    cfg: Mapping[str, Any],
    rng: torch.Generator | None,
    *,
    update_generator: bool,
    alphas_cumprod: Tensor,
    w_emb: Tensor,
    w: Tensor,
    timesteps: Sequence[int],
    prediction_type: str = "epsilon",
    real_latents: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """One DMD2 step's loss: the fake score's denoising loss, plus, on generator steps, the
    generator's distribution matching loss. One backward serves both: the generator's loss
    reaches only the generator (both scores run without gradient) and the fake score's only
    the fake score (the generator's output is detached), so the sum updates each by its own.

    With ``cfg["gan_weight"] > 0`` and ``pair.head`` set, DMD2's adversarial term joins them
    (:mod:`ops.distill.adversarial`): the discriminator (fake UNet + head) learns real
    ``real_latents`` from generated ones every step, weighted ``gan_d_weight``; the generator's
    non-saturating loss, weighted ``gan_weight``, runs through D with its parameters detached.

    ``pair`` has ``.generator`` (a consistency student) and ``.fake`` (a teacher-shaped UNet);
    ``w_emb`` is the generator's embedded guidance, ``w`` the real score's (LCM convention);
    ``cfg["one_step_timestep"]`` adds the one-step slot of :func:`generator_inputs`.
    """
    device = prompt_embeds.device
    batch = prompt_embeds.shape[0]
    T = int(cfg.get("num_train_timesteps", 1000))
    scalings = dict(
        sigma_data=float(cfg.get("sigma_data", 0.5)),
        timestep_scaling=float(cfg.get("timestep_scaling", 10.0)),
    )
    noise = randn(tuple(latents_shape), rng, device, torch.float32)
    z, t_gen = generator_inputs(
        pair.generator,
        noise,
        timesteps,
        cfg.get("one_step_timestep"),
        w_emb,
        prompt_embeds,
        alphas_cumprod,
        scalings,
        rng,
        cfg.get("one_step_share"),
    )
    with torch.set_grad_enabled(update_generator):
        x0 = generator_x0(pair.generator, z, t_gen, w_emb, prompt_embeds, alphas_cumprod, scalings)
    low, high = int(float(cfg["min_t"]) * T), int(float(cfg["max_t"]) * T)
    t_fake = uniform_timesteps(batch, 0, T, rng, device)
    fake_loss = denoising_loss(
        pair.fake,
        x0,
        prompt_embeds,
        t_fake,
        randn(x0.shape, rng, device, x0.dtype),
        alphas_cumprod,
        prediction_type,
    )
    logs = {"fake_loss": float(fake_loss.detach())}
    gan_weight = float(cfg.get("gan_weight") or 0.0)
    if gan_weight > 0:
        t_d = gan_timesteps(cfg, batch, T, rng, device)
        d_loss = _discriminator_step(
            pair, x0, real_latents, prompt_embeds, t_d, rng, alphas_cumprod
        )
        logs["d_loss"] = float(d_loss.detach())
        fake_loss = fake_loss + float(cfg.get("gan_d_weight", 0.01)) * d_loss
    if not update_generator:
        return fake_loss, logs
    t_dm = uniform_timesteps(batch, low, high, rng, device)
    real = guided_denoiser(
        teacher, prompt_embeds, uncond_embeds, w, alphas_cumprod, prediction_type
    )
    fake = unet_denoiser(pair.fake, prompt_embeds, alphas_cumprod, prediction_type)
    dm_loss = distribution_matching_loss(
        x0, real, fake, t_dm, randn(x0.shape, rng, device, x0.dtype), alphas_cumprod
    )
    logs["dm_loss"] = float(dm_loss.detach())
    loss = fake_loss + float(cfg.get("dm_weight", 1.0)) * dm_loss
    if gan_weight > 0:
        t_gan = gan_timesteps(cfg, batch, T, rng, device)
        x_t = noise_to(x0, randn(x0.shape, rng, device, x0.dtype), t_gan, alphas_cumprod)
        features = discriminator_features(pair.fake, x_t, t_gan, prompt_embeds, frozen=True)
        g_loss = generator_loss(frozen_call(pair.head, features))
        logs["g_loss"] = float(g_loss.detach())
        loss = loss + gan_weight * g_loss
    return loss, logs


def _discriminator_step(
    pair: Any,
    generated: Tensor,
    real_latents: Tensor | None,
    prompt_embeds: Tensor,
    t: Tensor,
    rng: torch.Generator | None,
    alphas_cumprod: Tensor,
) -> Tensor:
    """L_D on this step's (detached) generated latents and the batch's real latents, each
    noised to the same timesteps ``t`` with its own noise."""
    if real_latents is None or getattr(pair, "head", None) is None:
        raise ValueError("the adversarial term needs real_latents and a discriminator head")
    logits = []
    for latents in (generated.detach(), real_latents):
        noise = randn(latents.shape, rng, latents.device, latents.dtype)
        x_t = noise_to(latents, noise, t, alphas_cumprod)
        logits.append(pair.head(discriminator_features(pair.fake, x_t, t, prompt_embeds)))
    return discriminator_loss(*logits)


class GeneratorAndFakeScore(nn.Module):
    """The networks DMD2 trains, as one module, so that one optimizer (parameter groups with
    their own learning rates), one checkpoint and one EMA serve them all: the generator, the
    fake score and, with the adversarial term, the discriminator head on the fake score."""

    def __init__(self, generator: nn.Module, fake: nn.Module, adversarial: bool = False) -> None:
        super().__init__()
        self.generator = generator
        self.fake = fake
        self.head = BottleneckHead(bottleneck_channels(fake)) if adversarial else None

    def critic_parameters(self) -> list[nn.Parameter]:
        """The fake score's parameters and the head's: trained together, at the critic's rate."""
        head = list(self.head.parameters()) if self.head is not None else []
        return list(self.fake.parameters()) + head
