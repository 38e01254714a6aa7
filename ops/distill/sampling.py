"""Multistep consistency sampling, and the saved model directory stock diffusers can load.

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
LCM pipeline embeds ``guidance_scale - 1``; the user-facing functions here (:func:`generate`,
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

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ops.distill.consistency import consistency_function, ddim_jump, guidance_embedding
from ops.distill.schedule import lcm_timesteps
from ops.distill.solvers import append_dims
from ops.models.presets import encode_prompts

METADATA_FILE = "llcm.json"


# --------------------------------------------------------------------------------------------
# Timesteps and the sampling loop
# --------------------------------------------------------------------------------------------


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

    if not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
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


# --------------------------------------------------------------------------------------------
# A saved consistency pipeline: write, load, generate
# --------------------------------------------------------------------------------------------


def save_consistency_pipeline(
    student_unet: nn.Module,
    teacher_dir: str | Path,
    out_dir: str | Path,
    k: int,
    *,
    timestep_scaling: float = 10.0,
    metadata: Mapping[str, Any] | None = None,
    phases: int | None = None,
) -> Path:
    """Write a ``LatentConsistencyModelPipeline`` directory: student UNet + the teacher's parts.

    vae, text_encoder and tokenizer come from the teacher's ``StableDiffusionPipeline``
    directory; the scheduler is an ``LCMScheduler`` on the teacher's noise schedule with
    ``original_inference_steps = T / k``; no safety checker or feature extractor. Weights are
    safetensors. ``metadata`` (solver, k, training provenance) lands in ``llcm.json``. The
    directory is written next to ``out_dir`` and moved into place when complete.

    A phased student (``phases``, PCM) is written as a ``StableDiffusionPipeline`` with a
    ``TCDScheduler`` instead: stock diffusers then samples it with ``eta=0`` (the SD
    pipeline's default) exactly as :func:`phased_sample` does. (The LCM pipeline cannot: it
    hands TCD ``eta=None``.)
    """
    from diffusers import (
        AutoencoderKL,
        LatentConsistencyModelPipeline,
        LCMScheduler,
        StableDiffusionPipeline,
        TCDScheduler,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    if not (teacher_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"teacher pipeline {teacher_dir} has no model_index.json")
    if student_unet.config.get("time_cond_proj_dim") is None:
        raise ValueError("the student UNet has no guidance projection (time_cond_proj_dim)")
    sched = json.loads((teacher_dir / "scheduler" / "scheduler_config.json").read_text())
    T = int(sched.get("num_train_timesteps", 1000))
    if k < 1 or T % k:
        raise ValueError(f"skip k={k} must be a positive divisor of num_train_timesteps={T}")
    scheduler_class = TCDScheduler if phases else LCMScheduler
    scheduler = scheduler_class(
        num_train_timesteps=T,
        beta_start=sched.get("beta_start", 0.00085),
        beta_end=sched.get("beta_end", 0.012),
        beta_schedule=sched.get("beta_schedule", "scaled_linear"),
        trained_betas=sched.get("trained_betas"),
        prediction_type=sched.get("prediction_type", "epsilon"),
        rescale_betas_zero_snr=sched.get("rescale_betas_zero_snr", False),
        original_inference_steps=T // k,
        timestep_scaling=timestep_scaling,
        clip_sample=False,
        set_alpha_to_one=True,
        # unused by both; the SD pipeline warns about (and rewrites) TCD's default of 0
        **({"steps_offset": 1} if phases else {}),
    )
    pipeline_class = StableDiffusionPipeline if phases else LatentConsistencyModelPipeline
    pipe = pipeline_class(
        vae=AutoencoderKL.from_pretrained(teacher_dir / "vae", use_safetensors=True),
        text_encoder=CLIPTextModel.from_pretrained(
            teacher_dir / "text_encoder", use_safetensors=True
        ),
        tokenizer=CLIPTokenizer.from_pretrained(teacher_dir / "tokenizer"),
        unet=student_unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    pipe.save_pretrained(partial, safe_serialization=True)
    meta = {"k": k, "original_inference_steps": T // k, "timestep_scaling": timestep_scaling}
    if phases:
        meta["phases"] = int(phases)
    meta.update(metadata or {})
    (partial / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    return out_dir


@dataclass
class ConsistencyPipeline:
    """The parts of a saved consistency pipeline that :func:`generate` needs."""

    path: Path
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    alphas_cumprod: Tensor
    original_steps: int
    timestep_scaling: float
    prediction_type: str
    metadata: dict[str, Any]
    phased: bool = False  # saved with a TCDScheduler: sampled by :func:`phased_sample`

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_consistency_pipeline(
    path: str | Path, device: str | torch.device | None = None
) -> ConsistencyPipeline:
    """Load a directory written by :func:`save_consistency_pipeline` (or any LCM pipeline).

    ``device`` defaults to CUDA when available. Noise is always drawn on the CPU
    (:func:`generate`), so a seed gives the same images on any device up to kernel numerics.
    """
    from diffusers import AutoencoderKL, LCMScheduler, TCDScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved pipeline directory (no model_index.json)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    unet = UNet2DConditionModel.from_pretrained(path / "unet", use_safetensors=True)
    if unet.config.get("time_cond_proj_dim") is None:
        raise ValueError(f"{path} is not a consistency model: its UNet has no time_cond_proj_dim")
    vae = AutoencoderKL.from_pretrained(path / "vae", use_safetensors=True)
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", use_safetensors=True)
    config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    phased = config.get("_class_name") == "TCDScheduler"
    scheduler = (TCDScheduler if phased else LCMScheduler).from_pretrained(path / "scheduler")
    meta_file = path / METADATA_FILE
    return ConsistencyPipeline(
        path=path,
        unet=unet.to(device).eval(),
        vae=vae.to(device).eval(),
        text_encoder=text_encoder.to(device).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(path / "tokenizer"),
        alphas_cumprod=scheduler.alphas_cumprod,
        original_steps=int(scheduler.config.original_inference_steps),
        timestep_scaling=float(scheduler.config.timestep_scaling),
        prediction_type=scheduler.config.prediction_type,
        metadata=json.loads(meta_file.read_text()) if meta_file.is_file() else {},
        phased=phased,
    )


def sampler_timesteps(metadata: Mapping[str, Any], steps: int) -> list[int] | None:
    """The explicit timesteps a student was trained to be sampled at in ``steps`` steps
    (``llcm.json``'s ``timesteps``, e.g. ``{"1": [799]}``, llcm_dmd's one-step start), or None
    for LCMScheduler's own schedule. Stock diffusers takes the same list as ``timesteps=``."""
    chosen = (metadata.get("timesteps") or {}).get(str(int(steps)))
    if chosen is None:
        return None
    if len(chosen) != steps:
        raise ValueError(f"llcm.json lists {len(chosen)} timesteps for {steps} steps: {chosen}")
    return [int(t) for t in chosen]


@torch.no_grad()
def generate(
    pipe: ConsistencyPipeline,
    prompts: str | Sequence[str],
    *,
    steps: int = 4,
    guidance_scale: float = 4.0,
    seed: int = 0,
    num_images: int = 1,
    height: int | None = None,
    width: int | None = None,
    gamma: float | None = None,
) -> tuple[list[Any], Tensor]:
    """Images for ``prompts`` (``num_images`` each, prompt-major) and their latents.

    Returns (PIL images, denoised latents). ``guidance_scale`` is diffusers' (w + 1); the same
    seed gives the same images, as ``LatentConsistencyModelPipeline`` with the same generator
    (a phased student: as ``StableDiffusionPipeline`` with its ``TCDScheduler``). ``gamma``
    samples with TCD at that stochasticity (:func:`tcd_sample`; as ``StableDiffusionPipeline``
    with a ``TCDScheduler`` and ``eta=gamma``) instead of the model's own sampler (None).
    """
    from PIL import Image

    if not 1 <= steps <= pipe.original_steps:
        raise ValueError(
            f"steps must be between 1 and {pipe.original_steps} (original_inference_steps of "
            f"{pipe.path}), got {steps}"
        )
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    unet_param = next(pipe.unet.parameters())
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts)
    embeds = embeds.to(unet_param.device, unet_param.dtype).repeat_interleave(num_images, dim=0)
    f = pipe.vae_scale_factor
    default = pipe.unet.config.sample_size * f
    size = ((height or default) // f, (width or default) // f)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    common = dict(
        alphas_cumprod=pipe.alphas_cumprod,
        original_steps=pipe.original_steps,
        latent_size=size,
        prediction_type=pipe.prediction_type,
    )
    timesteps = sampler_timesteps(pipe.metadata, steps)
    if gamma is not None or pipe.phased:
        latents = tcd_sample(
            pipe.unet,
            embeds,
            steps,
            guidance_scale - 1.0,
            generator,
            gamma=0.0 if gamma is None else float(gamma),
            timesteps=timesteps,
            **common,
        )
    else:
        latents = consistency_sample(
            pipe.unet,
            embeds,
            steps,
            guidance_scale - 1.0,
            generator,
            timestep_scaling=pipe.timestep_scaling,
            timesteps=timesteps,
            **common,
        )
    pixels = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    pixels = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    images = [Image.fromarray((p * 255).round().astype("uint8")) for p in pixels]
    return images, latents
