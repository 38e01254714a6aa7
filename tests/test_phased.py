"""Phased consistency (PCM): the phase edges, the boundary condition, the loss, and our
deterministic sampler against stock diffusers' StableDiffusionPipeline + TCDScheduler."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from micro_sd import IMAGE_SIZE, PROMPTS, build_micro_pcm

from ops.distill.consistency import (
    ddim_jump,
    distill_loss,
    make_student,
)
from ops.distill.sampling import (
    load_consistency_pipeline,
    phased_sample,
)
from ops.distill.schedule import phase_floor, phase_tops, sd_alphas_cumprod, timestep_pairs
from ops.models.presets import encode_prompts

K = 20
PHASES = 4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pcm_dir(tmp_path_factory):
    """The micro consistency student of test_sampling, saved again as a 4-phase student."""
    return build_micro_pcm(tmp_path_factory.mktemp("phased"), K, PHASES)


def test_phase_edges_are_the_tcd_timesteps_and_hold_every_training_pair():
    from diffusers import TCDScheduler

    tops = phase_tops(PHASES, 1000 // K)
    assert tops.tolist() == [259, 499, 759, 999]
    sched = TCDScheduler(original_inference_steps=1000 // K)
    sched.set_timesteps(PHASES)
    assert sorted(sched.timesteps.tolist()) == tops.tolist()
    t = torch.tensor([19, 259, 279, 499, 519, 999])
    assert phase_floor(t, tops).tolist() == [0, 0, 259, 259, 499, 759]
    for k in (5, 10, 20, 40):
        for phases in (1, 2, 4, 8):
            edges = phase_tops(phases, 1000 // k)
            start, end = timestep_pairs(4096, k, generator=torch.Generator().manual_seed(k))
            floor = phase_floor(start, edges)
            # t_n never leaves t_{n+k}'s phase: the target jumps within one phase
            assert bool((end >= floor).all() and (start > floor).all()), (k, phases)


def test_the_phased_function_is_the_identity_at_its_edge():
    a = sd_alphas_cumprod()
    x, out = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    edge = torch.tensor([259, 499, 759])
    torch.testing.assert_close(ddim_jump(out, x, edge, edge, a), x, atol=1e-5, rtol=1e-5)
    # elsewhere it is the DDIM jump: from t to 0 it is close to the x0 estimate
    t, zero = torch.full((3,), 499), torch.zeros(3, dtype=torch.long)
    x0 = (x - (1 - a[499]).sqrt() * out) / a[499].sqrt()
    jumped = ddim_jump(out, x, t, zero, a)
    assert (jumped - x0).abs().max() < 0.1 * x0.abs().max()


def test_phased_loss_trains_the_student_and_differs_from_lcm(pcm_dir):
    from diffusers import UNet2DConditionModel

    teacher = UNet2DConditionModel.from_pretrained(pcm_dir.parent / "teacher" / "unet").eval()
    teacher.requires_grad_(False)
    student = make_student(teacher, 16)
    target = copy.deepcopy(student).requires_grad_(False).eval()
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 8, 8, generator=g)
    prompts = torch.randn(4, 77, teacher.config.cross_attention_dim, generator=g)
    uncond = torch.zeros(1, 77, teacher.config.cross_attention_dim)
    cfg = {"k": K, "w_min": 2.0, "w_max": 8.0, "loss": "l2", "leapfrog_h": 0.5}
    args = (student, target, teacher, "leapfrog", latents, prompts, uncond)
    lcm = distill_loss(*args, cfg, torch.Generator().manual_seed(1))
    pcm = distill_loss(*args, {**cfg, "phases": PHASES}, torch.Generator().manual_seed(1))
    assert torch.isfinite(pcm) and pcm.item() != lcm.item()
    pcm.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in target.parameters())
    assert student.conv_in.weight.grad.abs().sum() > 0


def test_saved_phased_student_is_a_stock_sd_pipeline_with_tcd(pcm_dir):
    index = json.loads((pcm_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    sched = json.loads((pcm_dir / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "TCDScheduler"
    assert sched["original_inference_steps"] == 1000 // K
    assert json.loads((pcm_dir / "llcm.json").read_text())["phases"] == PHASES
    assert load_consistency_pipeline(pcm_dir, device="cpu").phased


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_phased_sampler_matches_stock_sd_pipeline_with_tcd(pcm_dir, steps):
    from diffusers import StableDiffusionPipeline

    stock = StableDiffusionPipeline.from_pretrained(pcm_dir)
    stock.set_progress_bar_config(disable=True)
    ours = load_consistency_pipeline(pcm_dir, device="cpu")
    prompts = PROMPTS[:2]
    embeds = encode_prompts(ours.tokenizer, ours.text_encoder, prompts)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(steps))
    ref = stock(
        prompt=prompts,
        num_inference_steps=steps,
        guidance_scale=4.0,
        latents=noise,
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        output_type="latent",
    ).images
    common = dict(alphas_cumprod=ours.alphas_cumprod, original_steps=ours.original_steps)
    mine = phased_sample(ours.unet, embeds, steps, 3.0, latents=noise, **common)
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
    # deterministic: after the initial noise no draw is made, whatever the generator
    again = phased_sample(
        ours.unet, embeds, steps, 3.0, torch.Generator().manual_seed(99), latents=noise, **common
    )
    assert torch.equal(again, mine)
