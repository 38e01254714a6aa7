"""ODE solvers Psi for consistency distillation: one jump of the teacher from t_{n+k} to t_n.

Every solver here is one pure function with the same signature (k-diffusion's ``sampling.py``
style)::

    solver(x, t, s, model, alphas_cumprod) -> Tensor

- ``x``: the noisy latent z_t at timestep ``t`` (any shape; the batch is dimension 0);
- ``t``, ``s``: the start and end timesteps on the teacher's discrete schedule, tensors of shape
  ``(batch,)`` or scalars, ``t > s`` (integer tensors; fractional float timesteps are allowed and
  interpolated, see :func:`alpha_at`);
- ``model(x, t) -> (x0_hat, eps_hat)``: the guided teacher prediction at ``(x, t)``. For LCM
  distillation this is the classifier-free-guided estimate of the latent consistency paper
  (x0_hat = x0_c + w (x0_c - x0_u), likewise eps_hat), so the pair always satisfies
  x = sqrt(a_t) x0_hat + sqrt(1 - a_t) eps_hat;
- ``alphas_cumprod``: the teacher's a_t = prod(1 - beta) over its training timesteps.

Solver options (``h`` of :func:`leapfrog`) are bound with :func:`get_solver`, so the trainer only
ever sees the five-argument signature.

The probability-flow ODE of a variance-preserving model, written in the DDIM variables
y = x / sqrt(a) and sigma = sqrt((1 - a) / a), is (Song, Meng, Ermon, "Denoising Diffusion
Implicit Models", ICLR 2021, eq. 14; Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models", NeurIPS 2022, sec. 3)::

    dy / dsigma = eps(x, t).

DDIM is the Euler step of this ODE in sigma (first order); :func:`leapfrog2` is its staggered
midpoint (leapfrog) step (second order).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

Model = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class Solver(Protocol):
    def __call__(
        self, x: Tensor, t: Tensor, s: Tensor, model: Model, alphas_cumprod: Tensor
    ) -> Tensor: ...


# --------------------------------------------------------------------------------------------
# The discrete schedule as a function of (possibly fractional) time.
# --------------------------------------------------------------------------------------------


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dimensions so a per-sample ``v`` broadcasts against ``x``."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def _log_sigmas(alphas_cumprod: Tensor) -> Tensor:
    return 0.5 * (torch.log1p(-alphas_cumprod) - torch.log(alphas_cumprod))


def alpha_at(alphas_cumprod: Tensor, t: Tensor | float | int) -> Tensor:
    """a_t on the teacher's schedule: exact at integer ``t``, log-sigma interpolation between.

    Fractional timesteps are what a second-order step needs (its midpoint is rarely on the
    grid); interpolating log sigma linearly is k-diffusion's ``DiscreteSchedule.t_to_sigma``,
    and :func:`sigma_to_t` is its exact inverse.
    """
    t = torch.as_tensor(t, device=alphas_cumprod.device)
    if not t.is_floating_point():
        return alphas_cumprod[t]
    log_sigmas = _log_sigmas(alphas_cumprod)
    t = t.to(alphas_cumprod.dtype).clamp(0, len(alphas_cumprod) - 1)
    lo = t.floor().long()
    hi = t.ceil().long()
    w = t - lo
    log_sigma = (1 - w) * log_sigmas[lo] + w * log_sigmas[hi]
    return torch.sigmoid(-2 * log_sigma)  # a = 1 / (1 + sigma^2)


def sigma_to_t(alphas_cumprod: Tensor, sigma: Tensor) -> Tensor:
    """The (fractional) timestep whose sigma = sqrt((1 - a) / a) is ``sigma``."""
    log_sigmas = _log_sigmas(alphas_cumprod)
    log_sigma = sigma.to(alphas_cumprod.dtype).log()
    flat = log_sigma.reshape(-1).contiguous()
    hi = torch.searchsorted(log_sigmas, flat).clamp(1, len(log_sigmas) - 1)
    lo = hi - 1
    w = ((flat - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])).clamp(0, 1)
    return (lo.to(w.dtype) + w).reshape(log_sigma.shape)


# --------------------------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------------------------


def ddim(x: Tensor, t: Tensor, s: Tensor, model: Model, alphas_cumprod: Tensor) -> Tensor:
    """DDIM step Psi(z_t, t, s): the solver of the latent consistency model (LCM).

    Song et al. 2021 eq. 12 with eta = 0, the solver of Luo et al. 2023 (LCM)::

        z_s = sqrt(a_s) x0_hat + sqrt(1 - a_s) eps_hat

    Euler's method on dy/dsigma = eps: first order in the jump.
    """
    a_s = append_dims(alpha_at(alphas_cumprod, s).to(x.dtype), x.ndim)
    x0_hat, eps_hat = model(x, t)
    return a_s.sqrt() * x0_hat + (1 - a_s).sqrt() * eps_hat


def leapfrog(
    x: Tensor, t: Tensor, s: Tensor, model: Model, alphas_cumprod: Tensor, h: float = 0.5
) -> Tensor:
    """The LLCM paper's leapfrog step (eq. 15-16), read literally.

    Position and velocity at the target time s (eq. 15), half-step velocity and the update
    (eq. 16)::

        x      = sqrt(a_s) x0_hat
        v      = sqrt(1 - a_s) eps_hat
        v_half = 2 v
        z_s    = x + h v_half

    At h = 1/2 this is exactly :func:`ddim` (the same arithmetic, so the same floats): the
    paper's LLCM and LCM share the teacher's first-order jump. For h != 1/2 the noise component
    of z_s is scaled by 2h, so z_s leaves the probability-flow ODE trajectory (its noise level is
    no longer that of timestep s): other values of h are not consistent with the ODE and are kept
    only for the paper's ablation.
    """
    a_s = append_dims(alpha_at(alphas_cumprod, s).to(x.dtype), x.ndim)
    x0_hat, eps_hat = model(x, t)
    position = a_s.sqrt() * x0_hat  # eq. 15
    velocity = (1 - a_s).sqrt() * eps_hat  # eq. 15
    v_half = 2 * velocity  # eq. 16
    return position + h * v_half  # eq. 16


def leapfrog2(x: Tensor, t: Tensor, s: Tensor, model: Model, alphas_cumprod: Tensor) -> Tensor:
    """A second-order leapfrog jump: drift, kick at the half-jump, drift (explicit midpoint).

    In the DDIM ODE variables, position y = x / sqrt(a), time sigma = sqrt((1 - a) / a) and
    velocity dy/dsigma = eps(x, t) (Song et al. 2021 eq. 14). With the jump H = sigma_s - sigma_t
    and the half-jump sigma_m = (sigma_t + sigma_s) / 2::

        v_0     = eps(y_0, sigma_t)                        # the teacher at the start
        y_half  = y_0 + (H / 2) v_0                        # drift half a jump (a DDIM half-jump)
        v_half  = eps(y_half, sigma_m)                     # kick: the teacher at the half-jump
        y_s     = y_0 + H v_half                           # drift the whole jump at v_half
        z_s     = sqrt(a_s) y_s

    The velocity is staggered half a step from the position, as in leapfrog / Stormer-Verlet
    (Hairer, Lubich, Wanner, "Geometric Numerical Integration", 2006, ch. I.1); for a
    first-order ODE this is the explicit midpoint rule (Hairer, Norsett, Wanner, "Solving
    Ordinary Differential Equations I", ch. II.1), local error O(H^3), global error O(H^2),
    where DDIM's are O(H^2) and O(H). It is the sigma-midpoint sibling of DPM-Solver-2 (Lu et
    al., NeurIPS 2022, which takes the midpoint in log sigma); like EDM's Heun step (Karras et
    al. 2022, Alg. 1) it costs two teacher evaluations per jump instead of DDIM's one. The
    half-jump time is generally fractional: it is queried through the same ``model`` closure,
    which must accept float timesteps (see :func:`alpha_at`).
    """
    a_t = alpha_at(alphas_cumprod, t)
    a_s = alpha_at(alphas_cumprod, s)
    sigma_t = ((1 - a_t) / a_t).sqrt()
    sigma_s = ((1 - a_s) / a_s).sqrt()
    sigma_m = (sigma_t + sigma_s) / 2
    t_m = sigma_to_t(alphas_cumprod, sigma_m)
    a_t, a_s, sigma_t, sigma_s, sigma_m = (
        append_dims(v.to(x.dtype), x.ndim) for v in (a_t, a_s, sigma_t, sigma_s, sigma_m)
    )

    y = x / a_t.sqrt()  # position y_0
    _, v = model(x, t)  # velocity v_0 = eps_hat at the start
    y_half = y + (sigma_m - sigma_t) * v  # drift half a jump
    x_half = y_half / (1 + sigma_m**2).sqrt()  # back to x = sqrt(a) y, a = 1 / (1 + sigma^2)
    _, v_half = model(x_half, t_m)  # kick: the velocity at the half-jump
    y_s = y + (sigma_s - sigma_t) * v_half  # drift the whole jump
    return a_s.sqrt() * y_s


SOLVERS: dict[str, Callable[..., Tensor]] = {
    "ddim": ddim,
    "leapfrog": leapfrog,
    "leapfrog2": leapfrog2,
}


def get_solver(name: str, *, leapfrog_h: float = 0.5) -> Solver:
    """The solver called ``name`` with its options bound (``leapfrog_h`` for ``leapfrog``)."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; known solvers: {', '.join(SOLVERS)}")
    if name == "leapfrog":
        return functools.partial(leapfrog, h=leapfrog_h)
    return SOLVERS[name]
