"""Latent consistency distillation: the math of one training step (LCM Algorithm 1, eq. 11-14).

Luo et al., "Latent Consistency Models" (2023), distil a guided latent diffusion teacher into a
consistency function f(z, w, c, t) that maps any point of the teacher's augmented PF-ODE
trajectory to its origin (Song et al., "Consistency Models", ICML 2023). One step:

1. sample a pair (t_{n+k}, t_n) on the k-skipped grid and a guidance scale w ~ U[w_min, w_max];
2. noise the latent to z_{t_{n+k}};
3. student:  f_theta(z_{t_{n+k}}, w, c, t_{n+k})                                      (eq. 11)
4. teacher:  one guided jump Psi from t_{n+k} to t_n -> z_hat_{t_n}
   (:mod:`ops.distill.solvers`: ``ddim`` makes this LCM, ``leapfrog`` the LLCM paper's step)
5. target:   f_theta-(z_hat_{t_n}, w, c, t_n) with the EMA weights, no gradient
6. loss d(student, target), L2 or pseudo-Huber

(The LLCM paper writes these steps as its eq. 11-14; equation numbers below are given only
where they were checked: eq. 11, the parameterisation, and eq. 15-16, the leapfrog step.)

With ``phases`` (``distill.phased``) step 3's and step 5's function is PCM's phased one,
:func:`ddim_jump` to the lower edge of the phase (Wang et al. 2024), instead of eq. 11.

Everything here is a pure function of tensors and modules (the timestep grids are in
:mod:`ops.distill.schedule`); the trainer (accelerate, EMA schedule, checkpoints, MLflow)
calls :func:`distill_loss` and :func:`ema_update`.

Guidance convention: w is the LCM paper's, x0 = x0_c + w (x0_c - x0_u), i.e. Imagen /
diffusers guidance_scale = w + 1. ``LatentConsistencyModelPipeline`` embeds
``guidance_scale - 1``, so a model distilled at w is sampled with guidance_scale = w + 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ops.distill.schedule import (
    gen_device,
    noise_to,
    phase_floor,
    phase_tops,
    randn,
    sd_alphas_cumprod,
    timestep_pairs,
)
from ops.distill.solvers import Solver, alpha_at, append_dims, get_solver

# --------------------------------------------------------------------------------------------
# Consistency parameterisation (eq. 11)
# --------------------------------------------------------------------------------------------


def boundary_scalings(
    t: Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> tuple[Tensor, Tensor]:
    """c_skip(t), c_out(t) as in diffusers' LCM: c_skip(0) = 1, c_out(0) = 0, so f(x, 0) = x.

    c_skip = sd^2 / ((s t)^2 + sd^2),  c_out = s t / sqrt((s t)^2 + sd^2)  (s: timestep scaling)
    """
    scaled = torch.as_tensor(t).to(torch.float32) * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def split_prediction(
    output: Tensor, x: Tensor, alpha: Tensor, prediction_type: str = "epsilon"
) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps_hat) from a UNet output and x = sqrt(a) x0 + sqrt(1 - a) eps."""
    a = append_dims(alpha.to(x.dtype), x.ndim)
    if prediction_type == "epsilon":
        eps = output
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a.sqrt() * x - (1 - a).sqrt() * output
        eps = a.sqrt() * output + (1 - a).sqrt() * x
    elif prediction_type == "sample":
        x0 = output
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    return x0, eps


def consistency_function(
    output: Tensor,
    x: Tensor,
    t: Tensor,
    alphas_cumprod: Tensor,
    *,
    sigma_data: float = 0.5,
    timestep_scaling: float = 10.0,
    prediction_type: str = "epsilon",
) -> Tensor:
    """f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, eps_pred) (eq. 11, epsilon parameterisation)."""
    x0, _ = split_prediction(output, x, alpha_at(alphas_cumprod, t), prediction_type)
    c_skip, c_out = boundary_scalings(t, sigma_data, timestep_scaling)
    c_skip = append_dims(c_skip.to(x.device, x.dtype), x.ndim)
    c_out = append_dims(c_out.to(x.device, x.dtype), x.ndim)
    return c_skip * x + c_out * x0


# --------------------------------------------------------------------------------------------
# Phased consistency (PCM): the alternative to eq. 11
# --------------------------------------------------------------------------------------------
# Wang et al., "Phased Consistency Model" (PCM, NeurIPS 2024), split the trajectory into M
# phases with edges 0 = s_0 < s_1 < ... < s_M = T. Inside phase m, (s_{m-1}, s_m], the
# consistency function maps z_t to the trajectory's point at the phase's lower edge e = s_{m-1},
# not to its origin:  f(z_t, w, c, t) = sqrt(a_e) x0_hat + sqrt(1 - a_e) eps_hat, a DDIM jump
# with the student's prediction. The boundary condition f(z_e, e) = z_e holds by construction
# (no c_skip/c_out), and M-step sampling is deterministic, one jump per phase with no fresh
# noise: a 1-step LCM has to bridge the whole trajectory, each phase of a 4-phase model a
# quarter of it. Training is Algorithm 1 unchanged but for f: the same pairs, the same guided
# jump Psi, and the target f_ema(z_hat_{t_n}, t_n) jumps to the edge of t_{n+k}'s phase (t_n
# never leaves it: the edges lie on the grid). The edges are the timesteps diffusers'
# ``TCDScheduler`` visits at M steps, plus 0: at gamma = 0 its step is this DDIM jump.


def ddim_jump(
    output: Tensor,
    x: Tensor,
    t: Tensor,
    edge: Tensor,
    alphas_cumprod: Tensor,
    prediction_type: str = "epsilon",
) -> Tensor:
    """The phased consistency function: z_t -> sqrt(a_e) x0_hat + sqrt(1 - a_e) eps_hat."""
    alphas_cumprod = alphas_cumprod.to(x.device)
    x0, eps = split_prediction(output, x, alphas_cumprod[t], prediction_type)
    a_e = append_dims(alphas_cumprod[edge].to(x.dtype), x.ndim)
    return a_e.sqrt() * x0 + (1 - a_e).sqrt() * eps


# --------------------------------------------------------------------------------------------
# Guidance scale and its embedding
# --------------------------------------------------------------------------------------------


def sample_guidance(
    batch: int, w_min: float, w_max: float, generator: torch.Generator | None = None
) -> Tensor:
    """w ~ U[w_min, w_max], one per sample (LCM Algorithm 1); float32 on the generator's device."""
    u = torch.rand((batch,), generator=generator, device=gen_device(generator))
    return w_min + (w_max - w_min) * u


def guidance_embedding(w: Tensor, dim: int = 512, dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal embedding of w, fed to the UNet as ``timestep_cond`` (LCM sec. 4.2).

    Identical to diffusers' ``LatentConsistencyModelPipeline.get_guidance_scale_embedding``
    (after VDM's timestep embedding): w is scaled by 1000, then [sin, cos] over ``dim // 2``
    geometric frequencies from 1 to 1/10000.
    """
    if w.ndim != 1:
        raise ValueError(f"w must be 1-d, got shape {tuple(w.shape)}")
    w = w * 1000.0
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=dtype, device=w.device) * -(math.log(10000.0) / (half - 1))
    )
    emb = w.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


# --------------------------------------------------------------------------------------------
# Student
# --------------------------------------------------------------------------------------------


def make_student(teacher_unet: nn.Module, w_embedding_dim: int) -> nn.Module:
    """The student UNet: the teacher plus a fresh, zero-initialised guidance projection.

    The teacher's config with ``time_cond_proj_dim = w_embedding_dim`` adds
    ``time_embedding.cond_proj`` (a bias-free linear map of the w embedding into the timestep
    embedding's input). Every other weight is copied from the teacher; the copy must miss
    exactly the new projection and nothing else. Zero-initialising it makes the student start
    equal to the teacher for every w. (Copying the teacher config as is, as the reference
    script does, fails on a plain Stable Diffusion teacher: it has no ``time_cond_proj_dim``.)
    The student is float32, on the teacher's device, in train mode.
    """
    from diffusers import UNet2DConditionModel

    if teacher_unet.config.get("time_cond_proj_dim") is not None:
        raise ValueError(
            "the teacher UNet already has a guidance projection (time_cond_proj_dim="
            f"{teacher_unet.config['time_cond_proj_dim']}); distil from a plain diffusion UNet"
        )
    student = UNet2DConditionModel.from_config(
        teacher_unet.config, time_cond_proj_dim=w_embedding_dim
    )
    result = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    expected = {"time_embedding.cond_proj.weight"}
    if set(result.missing_keys) != expected or result.unexpected_keys:
        raise RuntimeError(
            f"student/teacher weight mismatch: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}; expected only {sorted(expected)} missing"
        )
    nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student.to(next(teacher_unet.parameters()).device).train()


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * online, parameters in place; buffers copied."""
    for p_target, p_online in zip(target.parameters(), online.parameters(), strict=True):
        p_target.lerp_(p_online.detach().to(p_target.dtype), 1.0 - decay)
    for b_target, b_online in zip(target.buffers(), online.buffers(), strict=True):
        b_target.copy_(b_online)


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def consistency_loss(pred: Tensor, target: Tensor, kind: str = "l2", huber_c: float = 1e-3):
    """d(pred, target): mean squared error, or pseudo-Huber mean(sqrt(d^2 + c^2) - c)."""
    diff = pred.float() - target.float()
    if kind == "l2":
        return diff.pow(2).mean()
    if kind == "huber":
        return (torch.sqrt(diff.pow(2) + huber_c**2) - huber_c).mean()
    raise ValueError(f"unknown loss {kind!r}; use 'l2' or 'huber'")


ICT_HUBER_SCALE = 0.00054  # iCT (Song & Dhariwal 2023, Sec. 3.3): c = 0.00054 sqrt(d)


def huber_constant(value: float | str, latent_dim: int) -> float:
    """The pseudo-Huber c: as configured, or ``"auto"``, iCT's c = 0.00054 sqrt(d) for d the
    dimension of one latent (0.03 for CIFAR-10's 3x32x32; 0.0086 for tiny's 4x8x8 latents,
    0.069 for SD's 4x64x64), which keeps the loss quadratic only for errors below ~1/sqrt(d)
    of a unit-norm latent whatever its size."""
    if value == "auto":
        return ICT_HUBER_SCALE * math.sqrt(latent_dim)
    return float(value)


def solver_for_model(model: str, cfg: Mapping[str, Any]) -> Solver:
    """The teacher solver of a distilled model (``distill.solvers``: lcm, llcm, llcm2, ...)."""
    solvers = cfg.get("solvers") or {}
    if model not in solvers:
        raise KeyError(f"no solver for model {model!r} in distill.solvers ({', '.join(solvers)})")
    return get_solver(solvers[model], leapfrog_h=float(cfg.get("leapfrog_h", 0.5)))


def guided_teacher(
    teacher_unet: nn.Module,
    prompt_embeds: Tensor,
    uncond_embeds: Tensor,
    w: Tensor,
    alphas_cumprod: Tensor,
    prediction_type: str = "epsilon",
):
    """The closure ``model(x, t) -> (x0_hat, eps_hat)`` the solvers call: the guided teacher.

    One batched UNet call evaluates the conditional and the unconditional branch (concatenated
    along the batch); LCM's guided estimate x0 = x0_c + w (x0_c - x0_u), eps = eps_c +
    w (eps_c - eps_u) follows. ``t`` may be fractional (the half-jump of ``leapfrog2``): the
    UNet's sinusoidal time embedding accepts float timesteps and a_t is interpolated.
    """
    dtype = next(teacher_unet.parameters()).dtype
    uncond = uncond_embeds.expand(prompt_embeds.shape[0], -1, -1)
    context = torch.cat([prompt_embeds, uncond]).to(dtype)

    def model(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        out = teacher_unet(
            torch.cat([x, x]).to(dtype), torch.cat([t, t]), encoder_hidden_states=context
        ).sample.to(x.dtype)
        alpha = alpha_at(alphas_cumprod, t).to(x.device)
        x0, eps = split_prediction(
            out, torch.cat([x, x]), torch.cat([alpha, alpha]), prediction_type
        )
        x0_c, x0_u = x0.chunk(2)
        eps_c, eps_u = eps.chunk(2)
        ww = append_dims(w.to(x.device, x.dtype), x.ndim)
        return x0_c + ww * (x0_c - x0_u), eps_c + ww * (eps_c - eps_u)

    return model


def distill_loss(
    student: nn.Module,
    target_student: nn.Module,
    teacher_unet: nn.Module,
    solver: Solver | str,
    latents: Tensor,
    prompt_embeds: Tensor,
    uncond_embeds: Tensor,
    cfg: Mapping[str, Any],
    generator: torch.Generator | None = None,
    *,
    alphas_cumprod: Tensor | None = None,
    prediction_type: str = "epsilon",
    timesteps: Tensor | None = None,
) -> Tensor:
    """The loss of one consistency-distillation step (LCM Algorithm 1).

    ``latents`` are clean (VAE-scaled) latents z_0, ``prompt_embeds`` their text embeddings,
    ``uncond_embeds`` the empty prompt's (batch 1 or the same batch). ``cfg`` is the ``distill``
    stage config: k, num_train_timesteps, w_min, w_max, loss, huber_c, sigma_data,
    timestep_scaling and, when ``solver`` is a name, leapfrog_h. ``alphas_cumprod`` is the
    teacher's schedule (default: Stable Diffusion's scaled_linear over num_train_timesteps).

    ``timesteps`` (one grid timestep t_{n+k} per sample) fixes step 1's draw, for measuring
    the loss at chosen timesteps (:mod:`ops.distill.diagnostics`); training leaves it None.

    Only the student gets gradients: the teacher's jump and the EMA target run under
    ``torch.no_grad``. ``leapfrog2``'s extra half-jump evaluation goes through the same guided
    teacher closure, so it is guided with the same w and prompts.
    """
    T = int(cfg.get("num_train_timesteps", 1000))
    device = latents.device
    if alphas_cumprod is None:
        alphas_cumprod = sd_alphas_cumprod(T)
    alphas_cumprod = alphas_cumprod.to(device=device, dtype=torch.float32)
    if isinstance(solver, str):
        solver = get_solver(solver, leapfrog_h=float(cfg.get("leapfrog_h", 0.5)))
    scalings = dict(
        sigma_data=float(cfg.get("sigma_data", 0.5)),
        timestep_scaling=float(cfg.get("timestep_scaling", 10.0)),
    )
    batch = latents.shape[0]

    # 1. (t_{n+k}, t_n) on the skipping grid, w ~ U[w_min, w_max] and its embedding.
    if timesteps is None:
        t, s = timestep_pairs(batch, int(cfg["k"]), T, generator, device)
    else:
        t = timesteps.to(device=device, dtype=torch.long)
        s = (t - int(cfg["k"])).clamp(min=0)
    w = sample_guidance(batch, float(cfg["w_min"]), float(cfg["w_max"]), generator).to(device)
    # ``student`` may be wrapped (DistributedDataParallel): its config is on ``.module``.
    config = getattr(student, "module", student).config
    w_emb = guidance_embedding(w, config.time_cond_proj_dim).to(device)

    # 2. z_{t_{n+k}} = sqrt(a) z_0 + sqrt(1 - a) noise.
    noise = randn(latents.shape, generator, device, latents.dtype)
    z_t = noise_to(latents, noise, t, alphas_cumprod)

    # 3. Online consistency function f_theta(z_{t_{n+k}}, w, c, t_{n+k})  (eq. 11), or with
    #    ``phases`` the phased one: a jump to the lower edge of t_{n+k}'s phase (PCM).
    function = _consistency_function(cfg, t, T, alphas_cumprod, prediction_type, scalings)
    out = student(z_t, t, timestep_cond=w_emb, encoder_hidden_states=prompt_embeds).sample
    pred = function(out, z_t, t)

    with torch.no_grad():
        # 4. The guided teacher's jump Psi to t_n.
        teacher = guided_teacher(
            teacher_unet, prompt_embeds, uncond_embeds, w, alphas_cumprod, prediction_type
        )
        z_s = solver(z_t.float(), t, s, teacher, alphas_cumprod)
        # 5. Target f_theta-(z_hat_{t_n}, w, c, t_n) with the EMA weights.
        target_dtype = next(target_student.parameters()).dtype
        out_s = target_student(
            z_s.to(target_dtype),
            s,
            timestep_cond=w_emb.to(target_dtype),
            encoder_hidden_states=prompt_embeds.to(target_dtype),
        ).sample
        target = function(out_s.float(), z_s, s)

    # 6. d(f_theta, f_theta-).
    c = huber_constant(cfg.get("huber_c", 1e-3), latents[0].numel())
    return consistency_loss(pred, target, str(cfg.get("loss", "l2")), c)


def _consistency_function(
    cfg: Mapping[str, Any],
    t: Tensor,
    num_train_timesteps: int,
    alphas_cumprod: Tensor,
    prediction_type: str,
    scalings: Mapping[str, float],
):
    """``f(output, x, at) -> Tensor`` for one training batch whose online timesteps are ``t``.

    Without ``cfg["phases"]``: LCM's f (eq. 11), c_skip x + c_out x0_hat. With it: PCM's
    phased f, a DDIM jump to the lower edge of the phase of ``t`` (:func:`ddim_jump`);
    the target, evaluated at t_n, jumps to that same edge.
    """
    phases = cfg.get("phases")
    if not phases:

        def lcm_f(output: Tensor, x: Tensor, at: Tensor) -> Tensor:
            return consistency_function(
                output, x, at, alphas_cumprod, prediction_type=prediction_type, **scalings
            )

        return lcm_f
    original_steps = num_train_timesteps // int(cfg["k"])
    edge = phase_floor(t, phase_tops(int(phases), original_steps, num_train_timesteps))

    def phased_f(output: Tensor, x: Tensor, at: Tensor) -> Tensor:
        return ddim_jump(output, x, at, edge, alphas_cumprod, prediction_type)

    return phased_f


# --------------------------------------------------------------------------------------------
