"""Stage ``dreambooth``: the few-shot baseline of the benchmark, built from the teacher.

One UNet is fine-tuned for all evaluated classes (the benchmark's, ``ops.eval.runner
.evaluated_classes``), DreamBooth style (``ops.baselines.dreambooth``):

1. *prior images*: before any training, the frozen teacher samples
   ``prior_images_per_class`` latents per class from the plain class prompt (DDIM,
   ``prior_steps`` steps, classifier-free guidance at ``sampling.guidance_scale``);
2. *instance images*: the first ``instance_images_per_class`` training latents of each class
   (by image id, from ``latents/``), captioned with the rare-token prompt
   "a <identifier> <class prompt>";
3. ``finetune_dreambooth`` fits both with the prior-preservation loss.

Why one model rather than one per class: the benchmark samples every class from one DreamBooth
row, and a shared identifier plus the class words is enough to address each class. The loss on
a fixed batch (same latents, noise and timesteps) is measured before and after training, so the
summary says whether fine-tuning moved the model the intended way.

Output ``models/dreambooth/``: a ``StableDiffusionPipeline`` directory (the teacher's VAE, text
encoder, tokenizer and scheduler; the fine-tuned UNet) that stock diffusers loads, plus
``dreambooth.json`` (identifier prompt per class, instance image ids, losses) and ``priors.png``
(a few prior images per class).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file

from ops.baselines.dreambooth import dreambooth_loss, finetune_dreambooth
from ops.config import stage_config
from ops.data.prompts import rare_token_prompt
from ops.eval.context import benchmark_config, evaluated_classes, image_seed
from ops.eval.plan import DREAMBOOTH_PROMPTS_FILE
from ops.eval.shards import ProcessGroup, shard
from ops.layout import DataLayout
from ops.models.presets import encode_prompts

STAGE = "dreambooth"
TEACHER = "teacher"
PRIOR_GRID = "priors.png"
EVAL_BATCH = 8


def instance_latents(
    layout: DataLayout, classes: list[str], per_class: int
) -> dict[str, tuple[list[str], torch.Tensor]]:
    """The first ``per_class`` training latents of each class (by image id): {class: (ids,
    latents)}. Only the shards that hold them are read."""
    from ops.training.latent_data import INDEX_FILE

    index_file = layout.latents / INDEX_FILE
    if not index_file.is_file():
        raise FileNotFoundError(f"{index_file} does not exist: run the latents stage first")
    index = pd.read_parquet(index_file)
    chosen = (
        index[index["class_name"].isin(classes)]
        .sort_values(["class_name", "image_id"])
        .groupby("class_name", sort=True)
        .head(per_class)
    )
    shards = {
        name: load_file(str(layout.latents / name))["latents"] for name in chosen["shard"].unique()
    }
    out: dict[str, tuple[list[str], torch.Tensor]] = {}
    for name, rows in chosen.groupby("class_name", sort=True):
        latents = torch.stack(
            [shards[s][int(r)] for s, r in zip(rows["shard"], rows["row"], strict=True)]
        )
        out[str(name)] = (rows["image_id"].astype(str).tolist(), latents.float())
    return out


@torch.no_grad()
def prior_latents(
    pipe: Any, prompt: str, n: int, steps: int, guidance: float, seed: int, batch: int
) -> torch.Tensor:
    """``n`` latents of the frozen teacher for the class prompt (the prior-preservation data)."""
    parts = []
    for b, start in enumerate(range(0, n, batch)):
        m = min(batch, n - start)
        generator = torch.Generator(device="cpu").manual_seed(image_seed(seed, prompt, 10_000 + b))
        out = pipe(
            prompt=[prompt] * m,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            output_type="latent",
        )
        parts.append(out.images.float().cpu())
    return torch.cat(parts)


@torch.no_grad()
def fixed_batch_loss(
    unet, scheduler, latents, embeds, num_instance: int, prior_weight: float, seed: int
) -> float:
    """The prior-preservation loss on one fixed draw of noise and timesteps."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=g)
    param = next(unet.parameters())
    loss = dreambooth_loss(
        unet,
        scheduler,
        latents.to(param.device, param.dtype),
        embeds.to(param.device, param.dtype),
        noise.to(param.device, param.dtype),
        t.to(param.device),
        num_instance,
        prior_weight,
    )
    return float(loss)


def _save_prior_grid(
    pipe: Any, priors: dict[str, torch.Tensor], path: Path, per_class: int = 4
) -> Path:
    from ops.training.grids import image_grid, tensor_to_pil

    images, labels = [], []
    vae = pipe.vae
    for name, latents in priors.items():
        with torch.no_grad():
            pixels = vae.decode(
                latents[:per_class].to(vae.device) / vae.config.scaling_factor
            ).sample
        tiles = tensor_to_pil(pixels)
        images += tiles + [tiles[-1]] * (per_class - len(tiles))
        labels.append(name)
    image_grid(images, cols=per_class, row_labels=labels).save(path)
    return path


def build_dreambooth(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Fine-tune the teacher DreamBooth-style on the evaluated classes; save; summary.

    Runs on ``dreambooth.threads`` torch CPU threads (see ``benchmark.threads`` for why)."""
    from ops.training.runtime import torch_threads

    with torch_threads(stage_config(params, STAGE).get("threads")):
        return train_dreambooth(params, layout)


def train_dreambooth(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """The stage's work (see :func:`build_dreambooth`)."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline

    from ops.training.checkpoint import atomic_directory

    t0 = time.perf_counter()
    cfg = stage_config(params, STAGE)
    bench = benchmark_config(params)
    teacher_dir = layout.model(TEACHER)
    if not (teacher_dir / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no teacher pipeline at {teacher_dir}: run the teacher stage first"
        )
    if not layout.manifest.is_file():
        raise FileNotFoundError(f"{layout.manifest} does not exist: run medimgs_manifest first")
    classes = evaluated_classes(params, pd.read_parquet(layout.manifest))
    instances = instance_latents(layout, list(classes), int(cfg["instance_images_per_class"]))
    missing = [c for c in classes if c not in instances]
    if not instances:
        raise ValueError(f"no training latents for any evaluated class ({', '.join(classes)})")

    group = ProcessGroup.current()
    device = torch.device(group.device)
    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline.from_pretrained(teacher_dir, use_safetensors=True)
    saved_scheduler = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(
        saved_scheduler.config, timestep_spacing=bench["teacher_timestep_spacing"]
    )
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)

    # 1. prior images from the frozen teacher, before its UNet changes; under a launch the
    #    classes are dealt over the ranks (seeds are per class) and gathered on rank 0, which
    #    alone fine-tunes: DreamBooth's batch of 4 has nothing to split across devices.
    guidance = float(bench["guidance_scale"])
    mine = [
        (
            name,
            prior_latents(
                pipe,
                classes[name],
                int(cfg["prior_images_per_class"]),
                int(cfg["prior_steps"]),
                guidance,
                seed,
                int(bench["generation_batch_size"]),
            ),
        )
        for name in shard(list(instances), group.rank, group.world_size)
    ]
    gathered = group.gather(mine)
    if gathered is None:
        return {"rank": group.rank, "prior_classes": [name for name, _ in mine]}
    by_name = dict(gathered)
    priors = {name: by_name[name] for name in instances}  # class order, whoever made them
    # 2. captions: identifier prompt for instances, class prompt for priors
    identifier = str(cfg["identifier"])
    instance_prompts = {name: rare_token_prompt(classes[name], identifier) for name in instances}
    names = list(instances)
    inst_lat = torch.cat([instances[n][1] for n in names])
    prior_lat = torch.cat([priors[n] for n in names])
    inst_text = encode_prompts(
        pipe.tokenizer, pipe.text_encoder, [instance_prompts[n] for n in names]
    )
    prior_text = encode_prompts(pipe.tokenizer, pipe.text_encoder, [classes[n] for n in names])
    inst_emb = torch.cat(
        [inst_text[i : i + 1].expand(len(instances[n][1]), -1, -1) for i, n in enumerate(names)]
    )
    prior_emb = torch.cat(
        [prior_text[i : i + 1].expand(len(priors[n]), -1, -1) for i, n in enumerate(names)]
    )

    # 3. fine-tune, with the loss on a fixed batch before and after
    noise_scheduler = DDPMScheduler.from_config(saved_scheduler.config)
    k = min(EVAL_BATCH // 2, len(inst_lat), len(prior_lat))
    eval_lat = torch.cat([inst_lat[:k], prior_lat[:k]])
    eval_emb = torch.cat([inst_emb[:k], prior_emb[:k]])
    prior_weight = float(cfg["prior_weight"])
    unet = pipe.unet
    loss_before = fixed_batch_loss(unet, noise_scheduler, eval_lat, eval_emb, k, prior_weight, seed)
    t1 = time.perf_counter()
    unet, losses = finetune_dreambooth(
        unet,
        noise_scheduler,
        inst_lat,
        inst_emb,
        prior_lat,
        prior_emb,
        steps=int(cfg["steps"]),
        lr=float(cfg["lr"]),
        prior_weight=prior_weight,
        generator=torch.Generator().manual_seed(seed),
        batch_size=int(cfg.get("batch_size", 4)),
    )
    train_seconds = time.perf_counter() - t1
    loss_after = fixed_batch_loss(unet, noise_scheduler, eval_lat, eval_emb, k, prior_weight, seed)

    # 4. save a stock StableDiffusionPipeline directory with the teacher's own scheduler
    out = layout.model(STAGE)
    pipe.unet = unet.eval()
    pipe.scheduler = saved_scheduler
    summary = {
        "model_dir": str(out),
        "identifier": identifier,
        "classes": names,
        "classes_without_latents": missing,
        "instance_images": {n: len(instances[n][0]) for n in names},
        "prior_images": {n: len(priors[n]) for n in names},
        "steps": int(cfg["steps"]),
        "loss_before": loss_before,
        "loss_after": loss_after,
        "first_losses": losses[:5],
        "last_losses": losses[-5:],
        "train_seconds": round(train_seconds, 3),
        "world_size": group.world_size,
        "seconds": 0.0,
    }
    meta = {
        "identifier": identifier,
        "prompts": instance_prompts,
        "class_prompts": {n: classes[n] for n in names},
        "instance_image_ids": {n: instances[n][0] for n in names},
        "summary": summary,
    }
    with atomic_directory(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        _save_prior_grid(pipe, priors, tmp / PRIOR_GRID)
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        (tmp / DREAMBOOTH_PROMPTS_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    summary["prior_grid"] = str(out / PRIOR_GRID)
    return summary
