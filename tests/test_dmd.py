"""DMD2 (``ops.distill.dmd``): the distribution-matching gradient, backward simulation, the
two time-scale update; and the ``llcm_dmd`` stage on a micro teacher (real trainer, real MLflow
store, stock diffusers loading the export)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_fixtures import copy_data, micro_test_params, prepared_data
from safetensors.torch import load_file

from ops.distill.consistency import guidance_embedding, make_student
from ops.distill.dmd import (
    GeneratorAndFakeScore,
    backward_simulation,
    distribution_matching_loss,
    dmd_losses,
    generator_inputs,
    generator_x0,
    noise_to,
)
from ops.distill.sampling import generate, load_consistency_pipeline
from ops.distill.schedule import sd_alphas_cumprod
from ops.layout import DataLayout

ALPHAS = sd_alphas_cumprod(1000)
SCALINGS = {"sigma_data": 0.5, "timestep_scaling": 10.0}


def test_distribution_matching_gradient_is_the_weighted_score_difference():
    """d loss / d x0 = (mu_fake - mu_real) / mean|x0 - mu_real| / numel (DMD eq. 7-8)."""
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 5, 5, requires_grad=True)
    noise, t = torch.randn(3, 4, 5, 5), torch.tensor([100, 500, 900])

    def real(x_t, tt):
        return 0.5 * x_t

    def fake(x_t, tt):
        return 0.5 * x_t + 0.1

    distribution_matching_loss(x0, real, fake, t, noise, ALPHAS).backward()
    x_t = noise_to(x0.detach(), noise, t, ALPHAS)
    weight = (x0.detach() - real(x_t, t)).abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = (fake(x_t, t) - real(x_t, t)) / weight / x0.numel()
    torch.testing.assert_close(x0.grad, expected)


def test_matching_scores_give_no_gradient():
    """A generator whose distribution the fake score says equals the teacher's is not moved."""
    x0 = torch.randn(2, 4, 5, 5, requires_grad=True)

    def same(x_t, tt):
        return x_t * 0.3

    loss = distribution_matching_loss(x0, same, same, torch.tensor([10, 990]),
                                      torch.randn(2, 4, 5, 5), ALPHAS)  # fmt: skip
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(x0.grad) == 0


@pytest.fixture(scope="module")
def nets():
    """A micro teacher (frozen), its consistency student and two prompts' embeddings."""
    from micro_sd import CROSS_DIM, micro_unet

    teacher = micro_unet().requires_grad_(False).eval()
    generator = make_student(teacher, 16)
    torch.nn.init.normal_(generator.time_embedding.cond_proj.weight, std=0.1)
    prompts = torch.randn(2, 4, CROSS_DIM, generator=torch.Generator().manual_seed(3))
    return generator, teacher, prompts


def test_backward_simulation_is_the_few_step_sampler_run_to_each_stop(nets):
    """Stop 0 keeps the noise; stop 1 is LCM's multistep sampling after one step: f at t_0,
    noised afresh to t_1 (DMD2's backward simulation)."""
    generator, _, prompts = nets
    timesteps = [999, 499]
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    w_emb = guidance_embedding(torch.full((2,), 3.0), generator.config.time_cond_proj_dim)
    rng = torch.Generator().manual_seed(7)
    z, t = backward_simulation(generator, noise, timesteps, torch.tensor([0, 1]), w_emb,
                               prompts, ALPHAS, SCALINGS, rng)  # fmt: skip
    assert t.tolist() == [999, 499]
    torch.testing.assert_close(z[0], noise[0])
    with torch.no_grad():
        x0 = generator_x0(generator, noise, torch.tensor([999, 999]), w_emb, prompts, ALPHAS,
                          SCALINGS)  # fmt: skip
    fresh = torch.randn(noise.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(z[1], noise_to(x0, fresh, torch.tensor([499, 499]), ALPHAS)[1])


def test_backward_simulation_runs_only_the_samples_still_simulating(nets):
    """Against the whole-batch loop (every sample through the generator at every step, the
    stopped ones kept by a mask): the same inputs up to float rounding, and the same random
    stream (the next draw from the generator is the same)."""
    generator, _, prompts = nets
    timesteps = [999, 759, 499, 259]
    batch = 12
    prompts = prompts[torch.arange(batch) % 2]
    noise = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    w_emb = guidance_embedding(torch.full((batch,), 3.0), generator.config.time_cond_proj_dim)
    stop = torch.tensor([0, 3, 1, 2, 3, 0, 1, 1, 2, 0, 3, 2])
    rng = torch.Generator().manual_seed(5)
    z, t = backward_simulation(generator, noise, timesteps, stop, w_emb, prompts, ALPHAS,
                               SCALINGS, rng)  # fmt: skip
    ref_rng = torch.Generator().manual_seed(5)
    ref = noise
    with torch.no_grad():
        for step in range(3):
            steps = torch.full((batch,), timesteps[step])
            x0 = generator_x0(generator, ref, steps, w_emb, prompts, ALPHAS, SCALINGS)
            fresh = torch.randn(noise.shape, generator=ref_rng)
            nxt = noise_to(x0, fresh, torch.full((batch,), timesteps[step + 1]), ALPHAS)
            ref = torch.where((stop > step).reshape(-1, 1, 1, 1), nxt, ref)
    torch.testing.assert_close(z, ref, rtol=1e-5, atol=1e-5)
    assert t.tolist() == [timesteps[s] for s in stop.tolist()]
    assert torch.equal(z[stop == 0], noise[stop == 0])
    assert torch.equal(torch.rand(3, generator=rng), torch.rand(3, generator=ref_rng))


def test_one_step_slot_is_pure_noise_at_its_timestep(nets):
    """With ``one_step_timestep`` one slot more: pure noise presented as t = 399 (DMD2's
    one-step generator); the other slots are backward simulation's. Without it, the draw and
    the inputs are backward simulation's exactly, on the same random stream."""
    generator, _, prompts = nets
    timesteps = [999, 499]
    prompts = prompts[:1].expand(64, -1, -1)
    noise = torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    w_emb = guidance_embedding(torch.full((64,), 3.0), generator.config.time_cond_proj_dim)
    z, t = generator_inputs(generator, noise, timesteps, 399, w_emb, prompts, ALPHAS, SCALINGS,
                            torch.Generator().manual_seed(2))  # fmt: skip
    assert set(t.tolist()) == {999, 499, 399}
    one = t == 399
    torch.testing.assert_close(z[one], noise[one])
    torch.testing.assert_close(z[t == 999], noise[t == 999])
    assert not torch.allclose(z[t == 499], noise[t == 499])
    plain = generator_inputs(generator, noise, timesteps, None, w_emb, prompts, ALPHAS, SCALINGS,
                             torch.Generator().manual_seed(2))  # fmt: skip
    rng = torch.Generator().manual_seed(2)
    stop = torch.randint(0, len(timesteps), (64,), generator=rng)
    ref = backward_simulation(generator, noise, timesteps, stop, w_emb, prompts, ALPHAS, SCALINGS,
                              rng)  # fmt: skip
    assert set(plain[1].tolist()) == {999, 499}
    torch.testing.assert_close(plain[0], ref[0])
    assert torch.equal(plain[1], ref[1])


def test_one_step_timestep_must_be_on_the_grid():
    from ops.distill.dmd_stage import one_step_timestep

    assert one_step_timestep({"k": 20, "num_train_timesteps": 1000}) is None
    cfg = {"k": 20, "num_train_timesteps": 1000, "one_step_timestep": 399}
    assert one_step_timestep(cfg) == 399
    for bad in (400, 1019, -1):
        with pytest.raises(ValueError, match="not on the k=20 grid"):
            one_step_timestep({**cfg, "one_step_timestep": bad})


def test_fake_steps_leave_the_generator_and_generator_steps_move_both(nets):
    """One optimizer, one backward: on a fake-only step the generator gets no gradient (so
    AdamW skips it); on a generator step both networks move, each by its own loss."""
    generator, teacher, prompts = nets
    pair = GeneratorAndFakeScore(generator, teacher_copy(teacher))
    cfg = {"min_t": 0.02, "max_t": 0.98, "num_train_timesteps": 1000}
    w = torch.full((2,), 3.0)
    w_emb = guidance_embedding(w, generator.config.time_cond_proj_dim)
    uncond = torch.zeros_like(prompts[:1])
    for update_generator in (False, True):
        pair.zero_grad(set_to_none=True)
        loss, logs = dmd_losses(
            pair, teacher, (2, 4, 8, 8), prompts, uncond, cfg, torch.Generator().manual_seed(0),
            update_generator=update_generator, alphas_cumprod=ALPHAS, w_emb=w_emb, w=w,
            timesteps=[999, 499],
        )  # fmt: skip
        loss.backward()
        gen_grads = [p.grad for p in pair.generator.parameters() if p.grad is not None]
        fake_grads = [p.grad for p in pair.fake.parameters() if p.grad is not None]
        assert fake_grads and logs["fake_loss"] > 0
        if update_generator:
            assert gen_grads and any(g.abs().sum() > 0 for g in gen_grads)
            assert "dm_loss" in logs
        else:
            assert not gen_grads and "dm_loss" not in logs
    assert all(p.grad is None for p in teacher.parameters())


def teacher_copy(teacher):
    import copy

    return copy.deepcopy(teacher).requires_grad_(True)


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def student_data(tmp_path_factory) -> DataLayout:
    from ops.distill.stage import build_llcm

    layout = copy_data(prepared_data(tmp_path_factory),
                       DataLayout(tmp_path_factory.mktemp("dmd") / "data"))  # fmt: skip
    build_llcm(micro_test_params("distill.k=100"), layout)
    return layout


def test_llcm_dmd_refines_llcm_loads_in_stock_diffusers_and_registers(student_data):
    from diffusers import LatentConsistencyModelPipeline
    from mlflow import MlflowClient

    from ops.distill.dmd_stage import build_llcm_dmd

    params = micro_test_params("distill.k=100")
    summary = build_llcm_dmd(params, student_data)
    assert summary["final_step"] == 10 and summary["solver"] == "dmd"
    out = student_data.model("llcm_dmd")
    meta = json.loads((out / "llcm.json").read_text())
    assert meta["objective"] == "dmd2" and meta["init_from"] == "llcm"
    assert meta["guidance"] == 3.0 and meta["real_guidance"] == 1.0  # distill.dmd's defaults
    assert meta["original_inference_steps"] == 10
    assert meta["timesteps"] == {"1": [799]}  # distill.dmd.one_step_timestep
    # started from llcm's weights, and moved away from them
    start = load_file(str(student_data.model("llcm") / "unet/diffusion_pytorch_model.safetensors"))
    end = load_file(str(out / "unet/diffusion_pytorch_model.safetensors"))
    assert start.keys() == end.keys() and any(not torch.equal(start[k], end[k]) for k in start)

    pipe = LatentConsistencyModelPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    images = pipe(prompt="MRI of a human brain, glioma", num_inference_steps=2,
                  guidance_scale=4.0, generator=torch.Generator().manual_seed(0),
                  output_type="np").images  # fmt: skip
    assert images.shape == (1, 32, 32, 3) and images.std() > 0
    # one step as trained: stock diffusers given timesteps=[799] = our generate(steps=1)
    one = pipe(prompt="MRI of a human brain, glioma", timesteps=[799], guidance_scale=4.0,
               generator=torch.Generator().manual_seed(5), output_type="np").images  # fmt: skip
    ours, _ = generate(load_consistency_pipeline(out), "MRI of a human brain, glioma", steps=1,
                       guidance_scale=4.0, seed=5)  # fmt: skip
    assert np.abs(np.asarray(ours[0], dtype=np.float64) - np.round(one[0] * 255)).max() <= 1

    client = MlflowClient(f"sqlite:///{student_data.mlflow_db}")
    version = client.get_model_version_by_alias("llcm_dmd", "champion")
    assert int(version.version) == summary["registered_version"]
    history = client.get_metric_history(summary["mlflow_run_id"], "dm_loss")
    assert [m.step for m in history] == [10] and all(m.value > 0 for m in history)


def test_llcm_dmd_refuses_to_start_without_its_student(tmp_path_factory):
    from ops.distill.dmd_stage import build_llcm_dmd

    layout = copy_data(prepared_data(tmp_path_factory),
                       DataLayout(tmp_path_factory.mktemp("nollcm") / "data"))  # fmt: skip
    with pytest.raises(FileNotFoundError, match="run the llcm stage first"):
        build_llcm_dmd(micro_test_params("distill.k=100"), layout)


def test_fake_score_loss_targets_the_teachers_parameterisation():
    """A denoiser that predicts exactly the right target has zero loss, for epsilon, v and
    sample prediction alike (the fake score trains on the teacher's own objective)."""
    from types import SimpleNamespace

    from ops.distill.dmd import denoising_loss

    x0, noise = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    t = torch.tensor([100, 800])
    a = ALPHAS[t].view(-1, 1, 1, 1)
    targets = {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0,
               "sample": x0}  # fmt: skip
    for kind, target in targets.items():

        def exact(x_t, tt, encoder_hidden_states, target=target):
            return SimpleNamespace(sample=target)

        assert denoising_loss(exact, x0, None, t, noise, ALPHAS, kind).item() < 1e-10
        for other in set(targets) - {kind}:  # the right prediction, scored as another kind
            assert denoising_loss(exact, x0, None, t, noise, ALPHAS, other).item() > 0.01
