"""Where along the trajectory a trained student is still inconsistent: the consistency loss by
timestep bucket.

A consistency model is trained so that f(z_{t_{n+k}}) = f(Psi(z_{t_{n+k}})) at every grid
timestep (LCM Algorithm 1). After training, the same loss evaluated with the exported weights
on both sides, at each grid timestep in turn, shows which part of the trajectory the budget has
not yet made self-consistent: a large loss near t = T limits one-step sampling, near t = 0 the
last steps of multistep sampling. The loss is measured on a fixed batch of training latents
with fixed noise, so students can be compared row for row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ops.distill.consistency import distill_loss
from ops.distill.schedule import timestep_grid
from ops.distill.solvers import Solver
from ops.training.latent_data import LatentDataset


@torch.no_grad()
def loss_by_timestep(
    student: nn.Module,
    teacher: nn.Module,
    solver: Solver,
    data: LatentDataset,
    cfg: Mapping[str, Any],
    alphas_cumprod: torch.Tensor,
    *,
    buckets: int = 5,
    batch_size: int = 32,
    seed: int = 0,
) -> list[dict[str, float]]:
    """The student's consistency loss at every grid timestep, averaged in ``buckets`` equal
    ranges of t; one row per bucket: ``t_low``, ``t_high`` (grid timesteps it holds), ``loss``.

    Both sides of the loss are ``student`` (its exported EMA weights), so the number is the
    model's remaining self-inconsistency, not a training-time loss against a lagging target.
    """
    k, T = int(cfg["k"]), int(cfg.get("num_train_timesteps", 1000))
    grid = timestep_grid(k, T)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    rows = order[: min(batch_size, len(data))]
    latents = data.latents[rows].float()
    prompts = data.prompts.embeds[data.prompt_ids[rows]].float()
    uncond = data.prompts.embeds[data.prompts.empty_id].unsqueeze(0).float()
    losses = []
    for t in grid.tolist():
        generator = torch.Generator().manual_seed(seed)  # the same noise and w at every t
        loss = distill_loss(
            student, student, teacher, solver, latents, prompts, uncond, cfg, generator,
            alphas_cumprod=alphas_cumprod, timesteps=torch.full((len(rows),), t),
        )  # fmt: skip
        losses.append(float(loss))
    edges = torch.linspace(0, len(grid), buckets + 1).round().long().tolist()
    return [
        {
            "t_low": int(grid[lo]),
            "t_high": int(grid[hi - 1]),
            "loss": sum(losses[lo:hi]) / (hi - lo),
        }
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
        if hi > lo
    ]
