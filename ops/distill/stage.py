"""Stages ``llcm``, ``lcm``, ``llcm2`` and ``llcm_pcm``: consistency distillation of the teacher
(Algorithm 1).

One trainer, models that differ only in the teacher's ODE step Psi (``distill.solvers``):
``lcm`` uses DDIM (Luo et al.'s LCM), ``llcm`` the paper's leapfrog step (eq. 15-16, DDIM at
h = 1/2), ``llcm2`` the second-order leapfrog; ``llcm_pcm`` takes llcm's step with the phased
consistency function (``distill.phased``, PCM) instead of eq. 11. The student is the teacher's
UNet plus a fresh guidance projection; the target network is the student's EMA (decay
``distill.ema_decay``, 0.95 in the paper, with no warm-up); the teacher and the target are
frozen and only the student trains. The math lives in ``ops.distill.consistency``; this module is the
loop around it, on the shared training infrastructure (multi-process, checkpoints, resume,
MLflow), and the export: a ``LatentConsistencyModelPipeline`` directory under
``models/<name>/`` registered in the MLflow model registry with the alias ``champion``.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ops.config import stage_config
from ops.distill.ablation import is_study_student, student_config
from ops.distill.consistency import distill_loss, make_student, solver_for_model
from ops.distill.sampling import generate, load_consistency_pipeline, save_consistency_pipeline
from ops.layout import DataLayout
from ops.models.presets import count_parameters
from ops.tracking.runs import MlflowRun, resume_and_start_run
from ops.training.batches import GlobalBatchPlan, derive_seed
from ops.training.checkpoint import CheckpointStore
from ops.training.ema import EMA
from ops.training.fingerprint import config_fingerprint, directory_hash
from ops.training.grids import save_grid
from ops.training.latent_data import FINGERPRINT_FILE, LatentDataset
from ops.training.launch import run_trainer
from ops.training.loop import LoopSettings, publish_and_clear, train_loop
from ops.training.runtime import create_accelerator, seed_everything, torch_threads
from ops.training.samples import write_class_table

STAGE = "distill"
TEACHER = "teacher"
GRID_FILE = "samples.png"
GRID_STEPS = (1, 2, 4, 8)
# Keys that do not change the trained weights (sampling grid only).
SAMPLING_KEYS = {"sample_guidance", "samples_per_class", "register"}


def build_llcm(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """The paper's model: the teacher's jump by the leapfrog step (eq. 15-16)."""
    return _build("llcm", params, layout)


def build_lcm(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """The LCM baseline: the teacher's jump by DDIM."""
    return _build("lcm", params, layout)


def build_llcm2(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """The second-order leapfrog variant (two teacher evaluations per jump)."""
    return _build("llcm2", params, layout)


def build_llcm_pcm(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """The phased student: the paper's leapfrog jump, trained to the edges of
    ``distill.phased.llcm_pcm`` phases (PCM), sampled deterministically."""
    return _build("llcm_pcm", params, layout)


def build_ablation_student(model: str, params: dict[str, Any], layout: DataLayout) -> dict:
    """A study student (``ops.distill.ablation``): ``llcm_k<k>`` (llcm with its k) or
    ``llcm_<variant>`` (llcm with ``distill.variants.<variant>``)."""
    if not is_study_student(model):
        raise KeyError(f"{model!r} is not a study student name (llcm_k<k> or llcm_<variant>)")
    return _build(model, params, layout)


def _build(model: str, params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    cfg = student_config(model, stage_config(params, STAGE))
    return run_trainer(model, functools.partial(train_distilled, model), params, layout, cfg)


def train_distilled(model: str, params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Trainer entrypoint (``python -m ops.entry llcm``): distill, save, register.

    Runs in one or several processes, on ``distill.threads`` torch CPU threads each (see
    ``ops.training.runtime.torch_threads``), resumes from ``checkpoints/<model>``."""
    cfg = student_config(model, stage_config(params, STAGE))
    with torch_threads(cfg.get("threads")):
        return _distill(model, cfg, params, layout)


def _distill(
    model: str, cfg: dict[str, Any], params: dict[str, Any], layout: DataLayout
) -> dict[str, Any]:
    from diffusers import DDIMScheduler, UNet2DConditionModel

    solver = solver_for_model(model, cfg)
    teacher_dir = layout.model(TEACHER)
    if not (teacher_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"{teacher_dir} has no teacher pipeline: run the teacher stage")
    accelerator = create_accelerator(str(cfg.get("mixed_precision", "no")))
    seed_everything(int(cfg["seed"]))
    device = accelerator.device

    teacher = UNet2DConditionModel.from_pretrained(teacher_dir / "unet", use_safetensors=True)
    teacher.requires_grad_(False).eval()
    alphas_cumprod = DDIMScheduler.from_pretrained(teacher_dir / "scheduler").alphas_cumprod
    student = initial_student(cfg, teacher)
    if cfg.get("gradient_checkpointing"):
        student.enable_gradient_checkpointing()
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        str(cfg.get("mixed_precision", "no")), torch.float32
    )
    teacher.to(device)
    if weight_dtype != torch.float32:
        teacher.to(dtype=weight_dtype)  # frozen: half precision halves its memory and time
    target = copy.deepcopy(student).requires_grad_(False).eval().to(device)
    ema = EMA(student, float(cfg["ema_decay"]), warmup=False).to(device)

    data = LatentDataset.load(layout.latents)
    uncond = data.prompts.embeds[data.prompts.empty_id].unsqueeze(0).to(device, torch.float32)
    optimizer = torch.optim.AdamW(
        student.parameters(),
        lr=float(cfg["learning_rate"]),
        weight_decay=float(cfg.get("weight_decay", 0.0)),
    )
    online, optimizer = accelerator.prepare(student, optimizer)

    starts = [
        teacher_dir / "unet",
        *([Path(cfg["init_student"])] if cfg.get("init_student") else []),
    ]
    store = student_store(layout, model, cfg, *starts)
    resume, run = resume_and_start_run(store, layout, params, model, accelerator)
    run.log_params(
        {
            **cfg,
            "model": model,
            "solver": cfg["solvers"][model],
            "train_latents": len(data),
            "unet_parameters": count_parameters(student),
        }
    )
    plan = step_plan(data, cfg, accelerator)
    seed, rank = int(cfg["seed"]), accelerator.process_index

    def loss_fn(step_batch):
        # The target is the EMA of the student as of this step (updated after each step).
        ema.copy_to(target)
        batch = data.batch(step_batch, 0.0, device)
        # Common random numbers: every model draws the same timesteps, w and noise at a step,
        # so the models differ only by their solver (and lcm == llcm at h = 1/2, bit for bit).
        generator = torch.Generator().manual_seed(derive_seed(seed, step_batch.step, rank))
        return distill_loss(
            online,
            target,
            teacher,
            solver,
            batch.latents,
            batch.encoder_hidden_states,
            uncond,
            cfg,
            generator,
            alphas_cumprod=alphas_cumprod,
        )

    result = train_loop(
        accelerator,
        online,
        optimizer,
        loss_fn,
        plan,
        LoopSettings.from_config(cfg, model),
        store,
        ema=ema,
        run=run,
        resume=resume,
    )
    summary: dict[str, Any] = {
        "model": model,
        "solver": cfg["solvers"][model],
        "k": int(cfg["k"]),
        "unet_parameters": count_parameters(student),
        **result.as_dict(),
    }

    def export() -> dict[str, Any]:
        # The exported model is the EMA target, as in LCM's reference training.
        exported = accelerator.unwrap_model(online)
        ema.copy_to(exported)
        return publish(model, exported.eval(), cfg, params, layout, data, run, result)

    return {**summary, **publish_and_clear(accelerator, store, export)}


def student_store(
    layout: DataLayout, model: str, cfg: dict[str, Any], *unet_dirs: Path
) -> CheckpointStore:
    """The checkpoints of a distilled model, valid for its config (sampling keys aside), the
    latents and the UNets it starts from (the teacher, and a student it continues)."""
    latents_key = json.loads((layout.latents / FINGERPRINT_FILE).read_text())["key"]
    return CheckpointStore(
        layout.checkpoint_dir(model),
        config_fingerprint(
            {**cfg, "model": model},
            latents_key,
            *(directory_hash(d) for d in unet_dirs),
            ignore=SAMPLING_KEYS,
        ),
    )


def step_plan(data: LatentDataset, cfg: dict[str, Any], accelerator: Any) -> GlobalBatchPlan:
    """This process's share of every step's global batch of ``distill.batch_size`` latents."""
    return GlobalBatchPlan(
        len(data),
        int(cfg["batch_size"]),
        int(cfg["seed"]),
        accelerator.process_index,
        accelerator.num_processes,
    )


def initial_student(cfg: dict[str, Any], teacher: torch.nn.Module) -> torch.nn.Module:
    """The student training starts from: the teacher plus a zero guidance projection
    (Algorithm 1), or with ``init_student`` (a student UNet directory, set by
    ``ops.finetune``) a distilled student, which fine-tuning continues from."""
    from diffusers import UNet2DConditionModel

    if not cfg.get("init_student"):
        return make_student(teacher, int(cfg["w_embedding_dim"])).train()
    student = UNet2DConditionModel.from_pretrained(cfg["init_student"], use_safetensors=True)
    if student.config.get("time_cond_proj_dim") is None:
        raise ValueError(f"{cfg['init_student']} is not a student UNet (no guidance projection)")
    teacher_shape = {k: teacher.config[k] for k in ("block_out_channels", "cross_attention_dim")}
    if {k: student.config[k] for k in teacher_shape} != teacher_shape:
        raise ValueError(f"{cfg['init_student']} does not have the teacher's architecture")
    return student.to(next(teacher.parameters()).device).train()


def publish(
    model: str,
    unet: torch.nn.Module,
    cfg: dict[str, Any],
    params: dict[str, Any],
    layout: DataLayout,
    data: LatentDataset,
    run: MlflowRun,
    result: Any,
    *,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save the consistency pipeline, sample a grid, log it and register the model.

    ``metadata`` (saved beside the pipeline) defaults to the consistency student's: its
    solver, leapfrog h, w range and steps."""
    from ops.distill.registry import register_model

    out = save_consistency_pipeline(
        unet,
        layout.model(TEACHER),
        layout.model(model),
        int(cfg["k"]),
        timestep_scaling=float(cfg["timestep_scaling"]),
        phases=cfg.get("phases"),
        metadata=metadata
        or {
            "model": model,
            "solver": cfg["solvers"][model],
            "leapfrog_h": float(cfg.get("leapfrog_h", 0.5)),
            "w_min": float(cfg["w_min"]),
            "w_max": float(cfg["w_max"]),
            "steps": int(cfg["steps"]),
        },
    )
    write_class_table(out, data.class_prompts())
    grid = sample_step_grid(
        out,
        data.class_prompts(),
        guidance_scale=float(cfg.get("sample_guidance", params["sampling"]["guidance_scale"])),
        seed=int(cfg["seed"]),
    )
    run.log_artifact(grid, "samples")
    summary: dict[str, Any] = {"model_dir": str(out), "grid": str(grid)}
    if cfg.get("register", True):
        metrics = {"final_loss": result.final_loss} if result.final_loss is not None else {}
        name = str(cfg.get("registered_name") or model)
        version = register_model(out, name, params, layout, metrics=metrics, set_champion=True)
        summary["registered_name"] = name
        summary["registered_version"] = int(version.version)
    summary["mlflow_run_id"] = run.run_id
    run.finish()
    return summary


@torch.no_grad()
def sample_step_grid(
    model_dir,
    class_prompts: dict[str, str],
    *,
    guidance_scale: float,
    seed: int,
    steps: Sequence[int] = GRID_STEPS,
    path: Path | None = None,
) -> Any:
    """One row per class, one column per step count of ``steps`` the model can run, same seed
    per row; saved to ``path`` (default ``<model_dir>/samples.png``)."""
    pipe = load_consistency_pipeline(model_dir)
    counts = [s for s in steps if s <= pipe.original_steps]
    images, labels = [], []
    for name, prompt in class_prompts.items():
        labels.append(name)
        for n in counts:
            imgs, _ = generate(pipe, prompt, steps=n, guidance_scale=guidance_scale, seed=seed)
            images.extend(imgs)
    return save_grid(path or Path(model_dir) / GRID_FILE, images, len(counts), labels)


def train_llcm(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    return train_distilled("llcm", params, layout)


def train_lcm(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    return train_distilled("lcm", params, layout)


def train_llcm2(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    return train_distilled("llcm2", params, layout)


def train_llcm_pcm(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    return train_distilled("llcm_pcm", params, layout)
