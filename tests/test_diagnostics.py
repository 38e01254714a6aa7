"""The consistency loss by timestep bucket (``ops.distill.diagnostics``) of a trained micro
student, and ``distill_loss`` at fixed timesteps."""

from __future__ import annotations

import torch
from model_fixtures import copy_data, micro_test_params, prepared_data

from ops.config import stage_config
from ops.distill.consistency import distill_loss, solver_for_model
from ops.distill.diagnostics import loss_by_timestep
from ops.layout import DataLayout
from ops.training.latent_data import LatentDataset


def test_buckets_cover_the_grid_and_repeat_exactly(tmp_path_factory):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from ops.distill.stage import build_llcm

    layout = copy_data(
        prepared_data(tmp_path_factory), DataLayout(tmp_path_factory.mktemp("d") / "data")
    )
    params = micro_test_params("distill.k=100", "distill.register=false")
    build_llcm(params, layout)
    cfg = stage_config(params, "distill")
    student = UNet2DConditionModel.from_pretrained(layout.model("llcm") / "unet").eval()
    teacher = UNet2DConditionModel.from_pretrained(layout.model("teacher") / "unet").eval()
    alphas = DDIMScheduler.from_pretrained(layout.model("teacher") / "scheduler").alphas_cumprod
    data = LatentDataset.load(layout.latents)
    args = (student, teacher, solver_for_model("llcm", cfg), data, cfg, alphas)
    rows = loss_by_timestep(*args, buckets=3, batch_size=4)
    # k = 100: grid 99, 199, ..., 999 in three buckets of 3, 4 and 3 timesteps
    assert [(r["t_low"], r["t_high"]) for r in rows] == [(99, 299), (399, 699), (799, 999)]
    assert all(r["loss"] > 0 for r in rows)
    assert rows == loss_by_timestep(*args, buckets=3, batch_size=4)

    # distill_loss at a fixed timestep uses it: t = 99 jumps to s = 0, where f(x, 0) = x
    latents = data.latents[:4].float()
    prompts = data.prompts.embeds[data.prompt_ids[:4]].float()
    uncond = data.prompts.embeds[data.prompts.empty_id].unsqueeze(0).float()
    losses = [
        float(
            distill_loss(
                student,
                student,
                teacher,
                "leapfrog",
                latents,
                prompts,
                uncond,
                cfg,
                torch.Generator().manual_seed(0),
                alphas_cumprod=alphas,
                timesteps=torch.full((4,), t),
            )
        )  # fmt: skip
        for t in (99, 999)
    ]
    assert losses[0] != losses[1]
