"""Stage ``llcm_dmd``: the paper's LLCM, refined by distribution matching (DMD2).

Consistency distillation follows the teacher's ODE one jump at a time and stays short of the
teacher at one step (measured in the README). DMD2 (Yin et al. 2024) instead matches the
distribution of the generator's outputs to the guided teacher's, with a fake score network
that learns what the generator makes now (``ops.distill.dmd``). Starting it from the trained
``llcm`` student (``distill.dmd.init_from``) instead of from the teacher gives it a generator
that already maps noise to images in one to four steps; DMD then corrects what that
generator gets wrong as a distribution. The export is the same ``LatentConsistencyModelPipeline``
as llcm's (stock diffusers, ``LCMScheduler``), registered in MLflow as ``llcm_dmd``.

The loop is the shared one (``ops.training.loop``): one loop step updates the fake score, and
every ``fake_updates``-th step also the generator (DMD2's two time-scale rule); both networks
are one module, one optimizer with two learning rates, one checkpoint and one EMA.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ops.config import stage_config
from ops.distill.ablation import student_config
from ops.distill.consistency import guidance_embedding
from ops.distill.dmd import GeneratorAndFakeScore, dmd_losses
from ops.distill.schedule import lcm_timesteps, timestep_grid
from ops.distill.stage import TEACHER, initial_student, publish, step_plan, student_store
from ops.layout import DataLayout
from ops.models.presets import count_parameters
from ops.tracking.runs import resume_and_start_run
from ops.training.batches import derive_seed
from ops.training.ema import EMA
from ops.training.latent_data import LatentDataset
from ops.training.launch import run_trainer
from ops.training.loop import LoopSettings, publish_and_clear, train_loop
from ops.training.runtime import create_accelerator, seed_everything, torch_threads

MODEL = "llcm_dmd"
STAGE = "distill"


def dmd_config(params: dict[str, Any]) -> dict[str, Any]:
    """``distill`` merged with ``distill.dmd`` (the DMD keys win), its steps and learning rate
    the preset's ``dmd_steps`` and ``dmd_learning_rate``."""
    cfg = student_config(MODEL, stage_config(params, STAGE))
    dmd = dict(cfg.get("dmd") or {})
    if not dmd:
        raise KeyError("params has no distill.dmd section: llcm_dmd needs its settings")
    return {**cfg, **dmd, "steps": cfg["dmd_steps"], "learning_rate": cfg["dmd_learning_rate"]}


def one_step_timestep(cfg: dict[str, Any]) -> int | None:
    """``one_step_timestep`` (None: one step starts at the schedule's 999, as LCMScheduler's),
    checked to lie on the k-skipped grid t_n = (n + 1) k - 1 LCMScheduler accepts timesteps from."""
    value = cfg.get("one_step_timestep")
    if value is None:
        return None
    t, k, T = int(value), int(cfg["k"]), int(cfg["num_train_timesteps"])
    if t not in timestep_grid(k, T).tolist():
        raise ValueError(
            f"distill.dmd.one_step_timestep={value} is not on the k={k} grid (n + 1) k - 1 < {T}"
        )
    return t


def build_llcm_dmd(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Train ``llcm_dmd`` from the ``init_from`` student (one process: see the trainer)."""
    return run_trainer(MODEL, train_llcm_dmd, params, layout, dmd_config(params))


def train_llcm_dmd(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Trainer entrypoint (``python -m ops.entry llcm_dmd``)."""
    cfg = dmd_config(params)
    with torch_threads(cfg.get("threads")):
        return _train(cfg, params, layout)


def _train(cfg: dict[str, Any], params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    from diffusers import DDIMScheduler, UNet2DConditionModel

    teacher_dir = layout.model(TEACHER)
    init_dir = layout.model(str(cfg["init_from"]))
    for path, stage in ((teacher_dir, TEACHER), (init_dir, cfg["init_from"])):
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"{path} has no pipeline: run the {stage} stage first")
    accelerator = create_accelerator(str(cfg.get("mixed_precision", "no")))
    if accelerator.num_processes > 1:
        # Two networks whose parameters take part in alternate steps would need DDP's
        # find_unused_parameters and one forward per step; not built: train it in one process.
        raise ValueError("llcm_dmd trains in one process: set distill.num_processes to 1")
    seed_everything(int(cfg["seed"]))
    device = accelerator.device

    teacher = UNet2DConditionModel.from_pretrained(teacher_dir / "unet", use_safetensors=True)
    teacher.requires_grad_(False).eval().to(device)
    alphas_cumprod = DDIMScheduler.from_pretrained(teacher_dir / "scheduler").alphas_cumprod
    generator = initial_student({**cfg, "init_student": str(init_dir / "unet")}, teacher)
    fake = copy.deepcopy(teacher).requires_grad_(True).train()
    gan_weight = float(cfg.get("gan_weight") or 0.0)
    pair = GeneratorAndFakeScore(generator, fake, adversarial=gan_weight > 0).to(device)
    ema = EMA(pair, float(cfg["ema_decay"]), warmup=False).to(device)

    data = LatentDataset.load(layout.latents)
    uncond = data.prompts.embeds[data.prompts.empty_id].unsqueeze(0).to(device, torch.float32)
    optimizer = torch.optim.AdamW(
        [
            {"params": list(pair.generator.parameters()), "lr_scale": 1.0},
            {"params": pair.critic_parameters(), "lr_scale": float(cfg["fake_lr_scale"])},
        ],
        lr=float(cfg["learning_rate"]),
        weight_decay=float(cfg.get("weight_decay", 0.0)),
    )
    online, optimizer = accelerator.prepare(pair, optimizer)

    store = student_store(layout, MODEL, cfg, teacher_dir / "unet", init_dir / "unet")
    resume, run = resume_and_start_run(store, layout, params, MODEL, accelerator)
    run.log_params(
        {
            **cfg,
            "model": MODEL,
            "train_latents": len(data),
            "unet_parameters": count_parameters(generator),
        }
    )
    plan = step_plan(data, cfg, accelerator)
    seed, every = int(cfg["seed"]), int(cfg["fake_updates"])
    original_steps = int(cfg["num_train_timesteps"]) // int(cfg["k"])
    timesteps = lcm_timesteps(
        int(cfg["generator_steps"]), original_steps, int(cfg["num_train_timesteps"])
    ).tolist()
    one_step = one_step_timestep(cfg)  # checked here; dmd_losses reads it from cfg
    w_value = float(cfg["guidance"])
    # the real score's guidance: by default the w the generator embeds (users' scale - 1)
    real_w = float(cfg["guidance"] if cfg.get("real_guidance") is None else cfg["real_guidance"])
    # the two losses, logged on generator steps only (every multiple of fake_updates)
    log_every = every * max(1, int(cfg.get("log_every", 10)) // every)

    def loss_fn(step_batch):
        batch = data.batch(step_batch, 0.0, device)
        prompts = batch.encoder_hidden_states
        w = torch.full((prompts.shape[0],), w_value, device=device)
        w_emb = guidance_embedding(w, generator.config.time_cond_proj_dim).to(device)
        w_real = torch.full_like(w, real_w)
        rng = torch.Generator().manual_seed(derive_seed(seed, step_batch.step, 0))
        done = step_batch.step + 1
        loss, logs = dmd_losses(
            online,
            teacher,
            batch.latents.shape,
            prompts,
            uncond,
            cfg,
            rng,
            update_generator=done % every == 0,
            alphas_cumprod=alphas_cumprod,
            w_emb=w_emb,
            w=w_real,
            timesteps=timesteps,
            real_latents=batch.latents,
        )
        if done % log_every == 0:
            run.log_metrics(logs, done)
        return loss

    result = train_loop(
        accelerator,
        online,
        optimizer,
        loss_fn,
        plan,
        LoopSettings.from_config(cfg, MODEL),
        store,
        ema=ema,
        run=run,
        resume=resume,
    )
    summary: dict[str, Any] = {
        "model": MODEL,
        "solver": "dmd",
        "k": int(cfg["k"]),
        "unet_parameters": count_parameters(generator),
        **result.as_dict(),
    }

    def export() -> dict[str, Any]:
        exported = accelerator.unwrap_model(online)
        ema.copy_to(exported)
        metadata = {
            "model": MODEL,
            "objective": "dmd2",
            "init_from": str(cfg["init_from"]),
            "guidance": w_value,
            "real_guidance": real_w,
            "gan_weight": gan_weight,
            "steps": int(cfg["steps"]),
        }
        if one_step is not None:
            # read by ops.distill.sampling.generate; stock diffusers: timesteps=[one_step]
            metadata["timesteps"] = {"1": [one_step]}
        return publish(
            MODEL,
            exported.generator.eval(),
            cfg,
            params,
            layout,
            data,
            run,
            result,
            metadata=metadata,
        )

    return {**summary, **publish_and_clear(accelerator, store, export)}
