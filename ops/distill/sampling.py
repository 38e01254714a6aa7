"""The saved consistency pipeline stock diffusers can load, and :func:`generate`.

:func:`save_consistency_pipeline` writes a ``LatentConsistencyModelPipeline`` directory (a phased
student: a ``StableDiffusionPipeline`` with a ``TCDScheduler``), :func:`load_consistency_pipeline`
reads one back and :func:`generate` samples it with the samplers of ``ops.distill.samplers``
(the student's own, or TCD at a given gamma), prompt to PIL images, the same pixels as stock
diffusers for the same seed. ``guidance_scale`` is diffusers' (= the distilled w + 1).
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

from ops.distill.samplers import consistency_sample, phased_sample, tcd_sample
from ops.models.presets import encode_prompts

METADATA_FILE = "llcm.json"
__all__ = [
    "METADATA_FILE",
    "ConsistencyPipeline",
    "consistency_sample",
    "generate",
    "load_consistency_pipeline",
    "phased_sample",
    "sampler_timesteps",
    "save_consistency_pipeline",
    "tcd_sample",
]


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
