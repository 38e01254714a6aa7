"""The noise schedule and the timestep grids of distillation and sampling.

Where on the teacher's trajectory each piece of LCM works: Stable Diffusion's a_t, the
k-skipped grid t_n = (n + 1) k - 1 that training pairs and sampling timesteps are drawn from
(LCM sec. 4.3), and the phase edges of a phased student (PCM). Pure functions of integers and
tensors, shared by the loss (:mod:`ops.distill.consistency`) and the samplers
(:mod:`ops.distill.sampling`), so training and sampling use one grid.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# --------------------------------------------------------------------------------------------
# The schedule, the skipping grid and its training pairs
# --------------------------------------------------------------------------------------------


def sd_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """Stable Diffusion's ``scaled_linear`` schedule: a_t = prod_{i<=t} (1 - beta_i)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def noise_to(x0: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise, ``t`` one long timestep per sample."""
    a = alphas_cumprod.to(x0.device)[t].to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def timestep_grid(k: int, num_train_timesteps: int = 1000) -> Tensor:
    """The skipping-step grid t_n = (n + 1) k - 1, n = 0 .. T/k - 1 (LCM sec. 4.3).

    It is the grid of diffusers' ``DDIMSolver`` in the LCM distillation scripts and of
    ``LCMScheduler`` with ``original_inference_steps = T / k``, so training and sampling agree.
    """
    if k < 1 or num_train_timesteps % k:
        raise ValueError(
            f"skip k={k} must be a positive divisor of num_train_timesteps={num_train_timesteps}"
        )
    return torch.arange(1, num_train_timesteps // k + 1) * k - 1


def lcm_timesteps(steps: int, original_steps: int, num_train_timesteps: int = 1000) -> Tensor:
    """``LCMScheduler.set_timesteps``: ``steps`` evenly indexed points of the skipping grid.

    ``original_steps`` = T / k is the size of the distillation grid t_n = (n + 1) k - 1.
    """
    if not 1 <= steps <= original_steps:
        raise ValueError(
            f"steps must be between 1 and {original_steps} (the model's original_inference_steps"
            f" = {num_train_timesteps}/k), got {steps}"
        )
    k = num_train_timesteps // original_steps
    origin = np.arange(1, original_steps + 1) * k - 1
    index = np.floor(np.linspace(0, original_steps, num=steps, endpoint=False)).astype(np.int64)
    return torch.from_numpy(origin[::-1][index].copy())


def timestep_pairs(
    batch: int,
    k: int,
    num_train_timesteps: int = 1000,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Random pairs (t_{n+k}, t_n) with t_n = t_{n+k} - k (clamped at 0), uniform over the grid.

    Returns two long tensors of shape ``(batch,)``. One noise draw makes z_{t_{n+k}}; z_{t_n} is
    the teacher's jump from it, never a second noise draw.
    """
    grid = timestep_grid(k, num_train_timesteps)
    index = torch.randint(0, len(grid), (batch,), generator=generator, device=gen_device(generator))
    start = grid[index.cpu()].to(device)
    return start, (start - k).clamp(min=0)


# --------------------------------------------------------------------------------------------
# Phase edges of a phased student (PCM; the phased function is ``consistency.ddim_jump``)
# --------------------------------------------------------------------------------------------


def phase_tops(phases: int, original_steps: int, num_train_timesteps: int = 1000) -> Tensor:
    """The upper phase edges s_1 < ... < s_M, ascending: the timesteps of an M-step schedule
    on the distillation grid (LCM/TCD's ``set_timesteps`` with ``original_inference_steps``)."""
    if phases < 1:
        raise ValueError(f"phases must be at least 1, got {phases}")
    return lcm_timesteps(phases, original_steps, num_train_timesteps).flip(0)


def phase_floor(t: Tensor, tops: Tensor) -> Tensor:
    """The lower edge s_{m-1} of the phase (s_{m-1}, s_m] holding each timestep of ``t``
    (0 for the lowest phase)."""
    lower = torch.cat([tops.new_zeros(1), tops[:-1]]).to(t.device)
    index = torch.searchsorted(tops.to(t.device), t.to(tops.dtype)).clamp(max=len(tops) - 1)
    return lower[index]


# --------------------------------------------------------------------------------------------


def gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def randn(shape, generator, device, dtype) -> Tensor:
    """Noise from ``generator`` (whatever its device), then moved: seeded on any device."""
    return torch.randn(shape, generator=generator, device=gen_device(generator)).to(device, dtype)
