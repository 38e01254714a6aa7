"""The benchmark's models and how each turns a prompt into uint8 images.

Every row of Table 3 is a *model spec*: which saved pipeline directory it samples, with which
sampler, at which step counts. Two families:

* ``diffusion``: a ``StableDiffusionPipeline`` directory (the teacher, the DreamBooth model)
  sampled by a diffusers scheduler (``ddim`` or ``dpmpp`` = DPM-Solver++ order 2) with
  classifier-free guidance, i.e. two UNet evaluations per step (one batched call on [uncond;
  cond]). ``teacher_ddim50`` is the teacher at a fixed 50 DDIM steps: the quality reference.
* ``consistency``: a distilled pipeline (``ops.distill.sampling``) sampled with multistep consistency
  sampling; guidance is embedded in the student, one UNet evaluation per step.

Any name that is not a built-in diffusion spec is a consistency model at ``models/<name>``
(``lcm``, ``llcm``, ``llcm2``, ``llcm_k10``...), so new students need no code here.
``<student>-tcd<gamma>`` (``llcm_dmd-tcd0.3``) is that student sampled with TCD at stochasticity
gamma (``ops.distill.samplers.tcd_sample``) instead of its own sampler: a row of its own.

Why ``timestep_spacing="trailing"`` for the diffusion samplers: SD's saved scheduler config uses
diffusers' ``leading`` spacing with ``steps_offset=1``, which makes a 1-step DDIM start at t=1
(pure noise read as an almost clean latent) and starves every few-step count of the high-noise
end. Trailing spacing starts at t=999 at every step count (Lin et al. 2024, "Common diffusion
noise schedules and sample steps are flawed"): the fair few-step baseline. It is configurable
(``benchmark.teacher_timestep_spacing``).

All samplers draw the initial latents first from one ``torch.Generator`` seeded per batch, in
the same shape, so every model starts from the same noise for the same class and batch: the
step-comparison grids compare like with like.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ops.distill.ablation import ablation_models
from ops.eval.settings import benchmark_config
from ops.layout import BASE_TEACHER, DataLayout

if TYPE_CHECKING:  # torch and numpy load on use: the Dagster definitions import this module
    import numpy as np
    import torch

DREAMBOOTH_PROMPTS_FILE = "dreambooth.json"


class SkipCell(Exception):
    """A cell that cannot be measured (model missing, step count out of range): the reason is
    recorded in the results instead of failing the benchmark."""


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: a row of Table 3."""

    name: str
    family: str  # "diffusion" | "consistency"
    directory: str  # under models/
    scheduler: str | None = None  # diffusion: "ddim" | "dpmpp"
    fixed_steps: int | None = None  # measured at this step count only (a reference row)
    identifier_prompts: bool = False  # DreamBooth: sample with the rare-token prompt
    gamma: float | None = None  # consistency: TCD's stochasticity; None: the model's own sampler


BUILTIN_SPECS: dict[str, ModelSpec] = {
    "teacher_ddim": ModelSpec("teacher_ddim", "diffusion", "teacher", "ddim"),
    "teacher_dpmpp": ModelSpec("teacher_dpmpp", "diffusion", "teacher", "dpmpp"),
    "teacher_ddim50": ModelSpec("teacher_ddim50", "diffusion", "teacher", "ddim", fixed_steps=50),
    "dreambooth": ModelSpec(
        "dreambooth", "diffusion", "dreambooth", "ddim", identifier_prompts=True
    ),
    # a fine-tune's zero-shot row: the base teacher prompted with the custom classes
    # (``ops.layout.FinetuneLayout`` resolves ``base_teacher``; elsewhere it is skipped)
    "base_teacher_dpmpp": ModelSpec("base_teacher_dpmpp", "diffusion", BASE_TEACHER, "dpmpp"),
}


TCD_SUFFIX = re.compile(r"^(?P<student>.+)-tcd(?P<gamma>[0-9]*\.?[0-9]+)$")


def model_spec(name: str) -> ModelSpec:
    """The spec of a benchmark model name (unknown names are consistency models; a
    ``-tcd<gamma>`` suffix samples one with TCD at that gamma)."""
    if name in BUILTIN_SPECS:
        return BUILTIN_SPECS[name]
    tcd = TCD_SUFFIX.match(name)
    if tcd is None:
        return ModelSpec(name, "consistency", name)
    from ops.distill.samplers import check_gamma  # torch loads only for a -tcd row

    return ModelSpec(name, "consistency", tcd["student"], gamma=check_gamma(tcd["gamma"]))


def grid_models(params: dict[str, Any]) -> list[str]:
    """The benchmarked models: ``benchmark.models`` (Table 3), then the skip-k ablation
    students (``distill.k_ablation``, reported in their own table)."""
    models = benchmark_config(params)["models"]
    return list(dict.fromkeys([*models, *ablation_models(params)]))


def model_steps(cfg: dict[str, Any], name: str, ablation: Sequence[str] = ()) -> list[int]:
    """The step counts of one model: its fixed count (a reference row), else
    ``benchmark.model_steps[name]``, else ``ablation_steps`` for an ablation student, else
    ``benchmark.steps``. Per-model lists let the default grid skip cells that measure nothing
    new (a student at 20 steps, a teacher at 1 step of both solvers)."""
    spec = model_spec(name)
    if spec.fixed_steps:
        return [spec.fixed_steps]
    per_model = cfg.get("model_steps") or {}
    if name in per_model:
        return sorted({int(s) for s in per_model[name]})
    if name in ablation and cfg.get("ablation_steps"):
        return sorted({int(s) for s in cfg["ablation_steps"]})
    return sorted({int(s) for s in cfg["steps"]})


def grid_cells(
    models: list[str],
    steps: list[int],
    cfg: dict[str, Any] | None = None,
    ablation: Sequence[str] = (),
) -> list[tuple[str, int]]:
    """(model, steps) of every cell, in table order: a fixed-step model has one cell; with
    ``cfg``, per-model step lists apply (:func:`model_steps`)."""
    base = {"steps": steps, **({k: v for k, v in (cfg or {}).items() if k != "steps"})}
    cells: list[tuple[str, int]] = []
    for name in models:
        cells += [(name, s) for s in model_steps(base, name, ablation)]
    return cells


def plan(
    params: dict[str, Any], models: Sequence[str] | None = None, steps: Sequence[int] | None = None
) -> list[tuple[str, int]]:
    """The (model, steps) cells to run: :func:`grid_models` at their step counts by default
    (also the Dagster partitions of ``benchmark_cells``); ``steps`` given overrides them all."""
    cfg = benchmark_config(params)
    chosen = list(models or grid_models(params))
    if steps:
        return grid_cells(chosen, [int(s) for s in steps])
    return grid_cells(chosen, [int(s) for s in cfg["steps"]], cfg, ablation_models(params))


def unavailable_reason(spec: ModelSpec, layout: DataLayout, steps: int) -> str | None:
    """Why the cell cannot run, read from the saved configs only (no weights loaded)."""
    directory = layout.model(spec.directory)
    if not (directory / "model_index.json").is_file():
        return f"model directory {directory} is missing (stage not run yet)"
    if spec.family == "consistency":
        sched = directory / "scheduler" / "scheduler_config.json"
        original = (
            json.loads(sched.read_text()).get("original_inference_steps")
            if sched.is_file()
            else None
        )
        if original is None:
            return f"{directory} has no LCM scheduler (original_inference_steps): not a consistency model"
        if steps > int(original):
            return (
                f"{steps} steps exceed the model's original_inference_steps {original} (= 1000/k)"
            )
    return None


class Sampler(Protocol):
    """Turns one prompt into ``n`` uint8 ``(n, H, W, 3)`` images."""

    unet_calls_per_step: int

    def prompt_for(self, class_name: str, class_prompt: str) -> tuple[str, str | None]:
        """The prompt to sample a class with, and a warning if it is a fallback."""

    def images(self, prompt: str, n: int, steps: int, seed: int) -> np.ndarray: ...


def _device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _quiet_diffusers() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


class DiffusionSampler:
    """A StableDiffusionPipeline with DDIM or DPM-Solver++ and classifier-free guidance."""

    unet_calls_per_step = 2

    def __init__(
        self,
        directory: Path,
        scheduler: str,
        guidance_scale: float,
        timestep_spacing: str = "trailing",
        identifier_prompts: bool = False,
        device: torch.device | None = None,
    ) -> None:
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

        _quiet_diffusers()
        self.device = device or _device()
        pipe = StableDiffusionPipeline.from_pretrained(directory, use_safetensors=True)
        config = pipe.scheduler.config
        if scheduler == "ddim":
            pipe.scheduler = DDIMScheduler.from_config(config, timestep_spacing=timestep_spacing)
        elif scheduler == "dpmpp":
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(
                config,
                algorithm_type="dpmsolver++",
                solver_order=2,
                timestep_spacing=timestep_spacing,
            )
        else:
            raise ValueError(f"unknown diffusion scheduler {scheduler!r}; use ddim or dpmpp")
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        self.guidance_scale = float(guidance_scale)
        self.prompts: dict[str, str] = {}
        meta = Path(directory) / DREAMBOOTH_PROMPTS_FILE
        if identifier_prompts and meta.is_file():
            self.prompts = dict(json.loads(meta.read_text()).get("prompts", {}))
        self.identifier_prompts = identifier_prompts
        self.identifier = (
            json.loads(meta.read_text()).get("identifier", "sks") if meta.is_file() else "sks"
        )

    def prompt_for(self, class_name: str, class_prompt: str) -> tuple[str, str | None]:
        if not self.identifier_prompts:
            return class_prompt, None
        if class_name in self.prompts:
            return self.prompts[class_name], None
        from ops.data.prompts import rare_token_prompt

        return (
            rare_token_prompt(class_prompt, self.identifier),
            f"class {class_name!r} was not fine-tuned; sampled with the identifier prompt anyway",
        )

    def images(self, prompt: str, n: int, steps: int, seed: int) -> np.ndarray:
        import torch

        from ops.eval.features import to_uint8_hwc

        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        with torch.no_grad():
            latents = self.pipe(
                prompt=[prompt] * n,
                num_inference_steps=int(steps),
                guidance_scale=self.guidance_scale,
                generator=generator,
                output_type="latent",
            ).images
            vae = self.pipe.vae
            pixels = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        return to_uint8_hwc(pixels)


class ConsistencySampler:
    """A distilled consistency pipeline (``ops.distill.sampling``): one UNet call per step."""

    unet_calls_per_step = 1

    def __init__(
        self,
        directory: Path,
        guidance_scale: float,
        device: torch.device | None = None,
        gamma: float | None = None,
    ) -> None:
        from ops.distill.sampling import load_consistency_pipeline

        _quiet_diffusers()
        self.pipe = load_consistency_pipeline(directory, device=device or _device())
        self.guidance_scale = float(guidance_scale)
        self.gamma = gamma

    def prompt_for(self, class_name: str, class_prompt: str) -> tuple[str, str | None]:
        return class_prompt, None

    def images(self, prompt: str, n: int, steps: int, seed: int) -> np.ndarray:
        import numpy as np

        from ops.distill.sampling import generate

        if steps > self.pipe.original_steps:
            raise SkipCell(
                f"{steps} steps exceed original_inference_steps {self.pipe.original_steps}"
            )
        pil, _ = generate(
            self.pipe,
            prompt,
            steps=int(steps),
            guidance_scale=self.guidance_scale,
            seed=int(seed),
            num_images=int(n),
            gamma=self.gamma,
        )
        return np.stack([np.asarray(img.convert("RGB")) for img in pil])


def open_sampler(
    spec: ModelSpec, layout: DataLayout, cfg: dict[str, Any], device: str | None = None
) -> Sampler:
    """Load the model of ``spec`` (check :func:`unavailable_reason` first) on ``device``
    (default: the GPU if there is one; each rank of a launch passes its own)."""
    import torch

    directory = layout.model(spec.directory)
    guidance = float(cfg["guidance_scale"])
    where = torch.device(device) if device else None
    if spec.family == "diffusion":
        return DiffusionSampler(
            directory,
            spec.scheduler or "ddim",
            guidance,
            str(cfg.get("teacher_timestep_spacing") or "trailing"),
            spec.identifier_prompts,
            device=where,
        )
    return ConsistencySampler(directory, guidance, device=where, gamma=spec.gamma)
