"""Stage ``teacher``: Stable Diffusion's UNet trained on the MedImgs latents.

The objective is SD's: predict the noise ``eps`` added to a latent at a uniformly drawn
timestep of the DDPM schedule (Ho et al. 2020; SD's 1000 ``scaled_linear`` steps, betas
0.00085..0.012), with the cached frozen text-encoder output as cross-attention context. A share
``prompt_dropout`` of prompts is replaced by the empty prompt so the same network also learns
the unconditional model that classifier-free guidance needs. AdamW, gradient clipping, EMA
weights (saved), optional mixed precision and gradient checkpointing.

``tiny``/``micro`` build the UNet from config; ``sd15`` fine-tunes SD 1.5's UNet; with
``teacher.init_unet`` (a UNet directory, set by ``ops.finetune``) training starts from that
UNet instead: how a user's fine-tune continues from the base teacher.

The result, ``models/teacher/``, is a standard ``StableDiffusionPipeline`` directory (EMA UNet,
base VAE/text encoder/tokenizer, DDIM scheduler on SD's schedule, no safety checker) that stock
diffusers loads with ``from_pretrained`` and samples with any of its schedulers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ops.config import stage_config
from ops.layout import DataLayout
from ops.models.presets import build_unet, count_parameters, ddim_scheduler, ddpm_scheduler
from ops.tracking.runs import MlflowRun, resume_and_start_run
from ops.training.batches import GlobalBatchPlan
from ops.training.checkpoint import CheckpointStore, atomic_directory
from ops.training.ema import EMA
from ops.training.fingerprint import config_fingerprint, directory_hash
from ops.training.latent_data import FINGERPRINT_FILE, LatentDataset
from ops.training.launch import run_trainer
from ops.training.loop import LoopSettings, publish_and_clear, train_loop
from ops.training.runtime import create_accelerator, seed_everything, torch_threads
from ops.training.samples import sample_class_grid, write_class_table

STAGE = "teacher"
BASE_MODEL = "base"
GRID_FILE = "samples.png"
# Keys that only affect the sample grid, not the trained weights.
SAMPLING_KEYS = {"sample_guidance", "sample_steps", "samples_per_class"}


def build_teacher(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Train the teacher (in this process or ``num_processes`` launched: presets.<name>.teacher); summary."""
    return run_trainer(STAGE, train_teacher, params, layout, stage_config(params, STAGE))


def train_teacher(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Trainer entrypoint (``python -m ops.entry teacher``): train, save, sample.

    Runs in one or several processes (global batch ``batch_size`` split evenly), resumes from
    ``checkpoints/teacher`` and clears it after success.
    """
    cfg = stage_config(params, STAGE)
    with torch_threads(cfg.get("threads")):
        return _train_teacher(cfg, params, layout)


def _train_teacher(cfg: dict[str, Any], params: dict[str, Any], layout: DataLayout) -> dict:
    accelerator = create_accelerator(str(cfg.get("mixed_precision", "no")))
    seed_everything(int(cfg["seed"]))
    data = LatentDataset.load(layout.latents)
    unet = initial_unet(cfg, data)
    if cfg.get("gradient_checkpointing"):
        unet.enable_gradient_checkpointing()
    ema = EMA(unet, float(cfg["ema_decay"]))
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=float(cfg["learning_rate"]),
        weight_decay=float(cfg.get("weight_decay", 0.01)),
    )
    model, optimizer = accelerator.prepare(unet, optimizer)
    device = accelerator.device
    ema.to(device)

    latents_key = json.loads((layout.latents / FINGERPRINT_FILE).read_text())["key"]
    init = [directory_hash(Path(cfg["init_unet"]))] if cfg.get("init_unet") else []
    store = CheckpointStore(
        layout.checkpoint_dir(STAGE),
        config_fingerprint(cfg, latents_key, *init, ignore=SAMPLING_KEYS),
    )
    resume, run = resume_and_start_run(store, layout, params, STAGE, accelerator)
    run.log_params({**cfg, "train_latents": len(data), "unet_parameters": count_parameters(unet)})
    plan = GlobalBatchPlan(
        len(data),
        int(cfg["batch_size"]),
        int(cfg["seed"]),
        accelerator.process_index,
        accelerator.num_processes,
    )
    schedule = ddpm_scheduler()
    num_timesteps = int(schedule.config.num_train_timesteps)
    prompt_dropout = float(cfg["prompt_dropout"])

    def loss_fn(step_batch):
        batch = data.batch(step_batch, prompt_dropout, device)
        noise = step_batch.randn(*data.latent_shape).to(device)
        timesteps = step_batch.randint(0, num_timesteps).to(device)
        noisy = schedule.add_noise(batch.latents, noise, timesteps)
        pred = model(noisy, timesteps, encoder_hidden_states=batch.encoder_hidden_states).sample
        return F.mse_loss(pred.float(), noise)

    result = train_loop(
        accelerator,
        model,
        optimizer,
        loss_fn,
        plan,
        LoopSettings.from_config(cfg, STAGE),
        store,
        ema=ema,
        run=run,
        resume=resume,
    )
    summary: dict[str, Any] = {
        "unet_parameters": count_parameters(unet),
        "train_latents": len(data),
        "classes": len(data.class_prompts()),
        **result.as_dict(),
    }

    def publish() -> dict[str, Any]:
        trained = accelerator.unwrap_model(model)
        ema.copy_to(trained)
        return publish_teacher(trained, cfg, layout, data, run)

    return {**summary, **publish_and_clear(accelerator, store, publish)}


def initial_unet(cfg: dict[str, Any], data: LatentDataset):
    """The UNet training starts from: ``init_unet`` when set (a fine-tune), else per preset."""
    from diffusers import UNet2DConditionModel

    channels, height, _ = data.latent_shape
    if not cfg.get("init_unet"):
        return build_unet(
            cfg, sample_size=height, in_channels=channels, cross_attention_dim=data.embed_dim
        )
    unet = UNet2DConditionModel.from_pretrained(cfg["init_unet"], use_safetensors=True)
    if (unet.config.in_channels, unet.config.cross_attention_dim) != (channels, data.embed_dim):
        raise ValueError(
            f"{cfg['init_unet']}: a UNet for {unet.config.in_channels} latent channels and "
            f"{unet.config.cross_attention_dim}-d text, the data has {channels} and {data.embed_dim}"
        )
    return unet.train()


def save_teacher_pipeline(unet, base: Path, out: Path) -> Path:
    """Write a ``StableDiffusionPipeline`` directory with ``unet`` and the base components."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(base / "vae", use_safetensors=True),
        text_encoder=CLIPTextModel.from_pretrained(base / "text_encoder", use_safetensors=True),
        tokenizer=CLIPTokenizer.from_pretrained(base / "tokenizer"),
        unet=unet,
        scheduler=ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    with atomic_directory(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return out


def publish_teacher(
    unet, cfg: dict[str, Any], layout: DataLayout, data: LatentDataset, run: MlflowRun
) -> dict[str, Any]:
    """Save the pipeline, reload it with stock diffusers, sample a grid per class, log all."""
    from diffusers import StableDiffusionPipeline

    out = save_teacher_pipeline(unet.eval(), layout.model(BASE_MODEL), layout.model(STAGE))
    write_class_table(out, data.class_prompts())
    pipe = StableDiffusionPipeline.from_pretrained(out, use_safetensors=True)
    pipe = pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)
    grid = sample_class_grid(
        pipe,
        data.class_prompts(),
        out / GRID_FILE,
        per_class=int(cfg.get("samples_per_class", 4)),
        steps=int(cfg.get("sample_steps", 25)),
        guidance_scale=float(cfg["sample_guidance"]),
        seed=int(cfg["seed"]),
    )
    run.log_artifact(grid, "samples")
    run.log_artifacts(out, "model")
    run.finish()
    return {"model_dir": str(out), "grid": str(grid), "mlflow_run_id": run.run_id}
