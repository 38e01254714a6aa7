"""Consistency distillation math on a micro UNet: boundary, student construction, loss, training."""

from __future__ import annotations

import copy

import pytest
import torch
from micro_sd import CROSS_DIM, micro_unet

from ops.distill.consistency import (
    boundary_scalings,
    consistency_function,
    consistency_loss,
    distill_loss,
    ema_update,
    guidance_embedding,
    guided_teacher,
    make_student,
    sample_guidance,
)
from ops.distill.schedule import sd_alphas_cumprod, timestep_grid, timestep_pairs
from ops.distill.solvers import get_solver

W_DIM = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher():
    unet = micro_unet().eval()
    unet.requires_grad_(False)
    return unet


@pytest.fixture
def cfg(micro_params):
    from ops.config import stage_config

    c = stage_config(micro_params, "distill")
    c.update(k=20, w_embedding_dim=W_DIM)
    return c


def batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(n, 4, 8, 8, generator=g)
    prompts = torch.randn(n, 5, CROSS_DIM, generator=g)
    uncond = torch.randn(1, 5, CROSS_DIM, generator=g)
    return latents, prompts, uncond


def test_boundary_condition():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 1, 999]))
    assert c_skip[0] == 1 and c_out[0] == 0
    assert c_skip[2] < 1e-6 and abs(c_out[2] - 1) < 1e-6
    x = torch.randn(3, 4, 8, 8)
    ac = sd_alphas_cumprod()
    f0 = consistency_function(torch.randn_like(x), x, torch.tensor([0, 0, 0]), ac)
    torch.testing.assert_close(f0, x)


def test_timestep_grid_and_pairs():
    grid = timestep_grid(20)
    assert grid[0] == 19 and grid[-1] == 999 and len(grid) == 50
    t, s = timestep_pairs(256, 20, generator=torch.Generator().manual_seed(0))
    assert torch.all(torch.isin(t, grid))
    assert torch.all(s == (t - 20).clamp(min=0))
    assert (s == 0).any()  # the first grid point jumps to the boundary t = 0
    with pytest.raises(ValueError, match="divisor"):
        timestep_grid(30)


def test_guidance_embedding_matches_diffusers():
    from diffusers import LatentConsistencyModelPipeline

    w = sample_guidance(6, 2.0, 8.0, torch.Generator().manual_seed(0))
    assert torch.all((w >= 2.0) & (w <= 8.0))
    ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=32)
    torch.testing.assert_close(guidance_embedding(w, 32), ref)


def test_make_student_starts_equal_to_teacher(teacher):
    student = make_student(teacher, W_DIM)
    assert student.config.time_cond_proj_dim == W_DIM
    proj = student.time_embedding.cond_proj
    assert proj.weight.shape == (teacher.time_embedding.linear_1.in_features, W_DIM)
    assert torch.all(proj.weight == 0)
    assert teacher.time_embedding.cond_proj is None
    x, prompts, _ = batch()
    t = torch.tensor([999, 300])
    w_emb = guidance_embedding(torch.tensor([3.0, 7.0]), W_DIM)
    with torch.no_grad():
        ref = teacher(x, t, encoder_hidden_states=prompts).sample
        out = student(x, t, timestep_cond=w_emb, encoder_hidden_states=prompts).sample
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="already has a guidance projection"):
        make_student(student, W_DIM)


def test_losses():
    a, b = torch.zeros(4), torch.full((4,), 0.3)
    assert consistency_loss(a, b, "l2").item() == pytest.approx(0.09)
    huber = consistency_loss(a, b, "huber", huber_c=0.001).item()
    assert huber == pytest.approx((0.3**2 + 1e-6) ** 0.5 - 1e-3)
    with pytest.raises(ValueError):
        consistency_loss(a, b, "l1")


def test_ema_update():
    online, target = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = target.weight.detach().clone()
    ema_update(target, online, 0.9)
    torch.testing.assert_close(target.weight, 0.9 * before + 0.1 * online.weight.detach())


def test_guided_teacher_uses_one_batched_call(teacher):
    x, prompts, uncond = batch()
    calls = []
    handle = teacher.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        model = guided_teacher(
            teacher, prompts, uncond, torch.tensor([2.0, 4.0]), sd_alphas_cumprod()
        )
        with torch.no_grad():
            x0, eps = model(x, torch.tensor([500, 200]))
            get_solver("leapfrog2")(
                x, torch.tensor([500, 200]), torch.tensor([480, 180]), model, sd_alphas_cumprod()
            )
    finally:
        handle.remove()
    assert calls == [4, 4, 4]  # one call per evaluation (cond + uncond stacked); leapfrog2 two
    a = sd_alphas_cumprod()[[500, 200]].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(a.sqrt() * x0 + (1 - a).sqrt() * eps, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("solver", ["ddim", "leapfrog", "leapfrog2"])
def test_distill_loss_trains_only_the_student(teacher, cfg, solver):
    student = make_student(teacher, W_DIM)
    target = copy.deepcopy(student).requires_grad_(False).eval()
    latents, prompts, uncond = batch()
    loss = distill_loss(
        student, target, teacher, solver, latents, prompts, uncond, cfg,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in target.parameters())
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in grads)
    assert student.time_embedding.cond_proj.weight.grad.abs().sum() > 0


def test_distill_loss_is_seeded(teacher, cfg):
    student = make_student(teacher, W_DIM)
    target = copy.deepcopy(student).requires_grad_(False)
    args = (student, target, teacher, "leapfrog", *batch(), cfg)
    a = distill_loss(*args, torch.Generator().manual_seed(3))
    b = distill_loss(*args, torch.Generator().manual_seed(3))
    c = distill_loss(*args, torch.Generator().manual_seed(4))
    assert a.item() == b.item() != c.item()


def test_a_few_steps_decrease_the_loss(teacher, cfg):
    """Same batch and seed each step: the consistency loss must go down as the student fits."""
    torch.manual_seed(0)
    student = make_student(teacher, W_DIM)
    target = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)
    cfg = dict(cfg, loss="l2")
    data = batch(4, seed=1)
    losses = []
    for _ in range(8):
        loss = distill_loss(
            student, target, teacher, "ddim", *data, cfg, torch.Generator().manual_seed(0)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(target, student, cfg["ema_decay"])
        losses.append(loss.item())
    print("losses", losses)
    assert losses[-1] < 0.7 * losses[0], losses


def test_solver_for_model(cfg):
    from ops.distill.consistency import solver_for_model
    from ops.distill.solvers import ddim, leapfrog2

    assert solver_for_model("lcm", cfg) is ddim
    assert solver_for_model("llcm2", cfg) is leapfrog2
    assert solver_for_model("llcm", cfg).keywords == {"h": cfg["leapfrog_h"]}
    with pytest.raises(KeyError, match="no solver for model 'dreambooth'"):
        solver_for_model("dreambooth", cfg)
