"""Our consistency sampler against stock diffusers' LatentConsistencyModelPipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from micro_sd import IMAGE_SIZE, PROMPTS, build_micro_lcm, build_micro_pcm

from ops.distill.consistency import make_student
from ops.distill.sampling import (
    consistency_sample,
    generate,
    load_consistency_pipeline,
    sampler_timesteps,
    save_consistency_pipeline,
)
from ops.distill.schedule import lcm_timesteps
from ops.models.presets import encode_prompts
from ops.training.grids import image_grid

K = 20
STEPS = [1, 2, 4, 6, 8, 10, 20]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lcm_dir(tmp_path_factory):
    """A micro teacher, a student with a random (non-zero) guidance projection, saved."""
    return build_micro_lcm(tmp_path_factory.mktemp("sampling"), K)


@pytest.mark.parametrize("k", [5, 10, 20, 40])
def test_timesteps_match_lcm_scheduler(k):
    from diffusers import LCMScheduler

    sched = LCMScheduler(original_inference_steps=1000 // k)
    for steps in STEPS:
        sched.set_timesteps(steps)
        assert lcm_timesteps(steps, 1000 // k).tolist() == sched.timesteps.tolist()
    with pytest.raises(ValueError, match="steps must be between 1 and"):
        lcm_timesteps(1000 // k + 1, 1000 // k)
    with pytest.raises(ValueError, match="steps must be between 1 and"):
        lcm_timesteps(0, 1000 // k)


def test_saved_directory_layout(lcm_dir):
    index = json.loads((lcm_dir / "model_index.json").read_text())
    assert index["_class_name"] == "LatentConsistencyModelPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    sched = json.loads((lcm_dir / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "LCMScheduler"
    assert sched["original_inference_steps"] == 1000 // K
    assert json.loads((lcm_dir / "unet" / "config.json").read_text())["time_cond_proj_dim"] == 16
    assert not list(lcm_dir.rglob("*.bin")) and list(lcm_dir.rglob("*.safetensors"))
    assert json.loads((lcm_dir / "llcm.json").read_text())["solver"] == "leapfrog"


def test_sampler_matches_stock_pipeline(lcm_dir):
    from diffusers import LatentConsistencyModelPipeline

    stock = LatentConsistencyModelPipeline.from_pretrained(lcm_dir)
    stock.set_progress_bar_config(disable=True)
    ours = load_consistency_pipeline(lcm_dir)
    prompts = PROMPTS[:2]
    embeds = encode_prompts(ours.tokenizer, ours.text_encoder, prompts)
    for steps in STEPS:
        noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(steps))
        ref = stock(
            prompt=prompts,
            num_inference_steps=steps,
            guidance_scale=4.0,
            latents=noise,
            generator=torch.Generator().manual_seed(7),
            height=IMAGE_SIZE,
            width=IMAGE_SIZE,
            output_type="latent",
        ).images
        mine = consistency_sample(
            ours.unet,
            embeds,
            steps,
            4.0 - 1.0,
            torch.Generator().manual_seed(7),
            alphas_cumprod=ours.alphas_cumprod,
            original_steps=ours.original_steps,
            latents=noise,
        )
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5, msg=f"steps={steps}")
    # The guidance weight reaches the student (the projection is not zero here).
    other = consistency_sample(
        ours.unet, embeds, 4, 7.0, torch.Generator().manual_seed(7),
        alphas_cumprod=ours.alphas_cumprod, original_steps=ours.original_steps, latents=noise,
    )  # fmt: skip
    assert not torch.allclose(other, mine)


def stock_pixels(stock, prompt: str, *, steps: int, seed: int, n: int, **kwargs) -> np.ndarray:
    """A stock diffusers pipeline's images in [0, 1], seeded as ``generate`` seeds."""
    kwargs.setdefault("guidance_scale", 4.0)
    return stock(
        prompt=prompt,
        num_inference_steps=steps,
        num_images_per_prompt=n,
        generator=torch.Generator().manual_seed(seed),
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        output_type="np",
        **kwargs,
    ).images


def assert_same_pixels(images, ref: np.ndarray, msg: str = "") -> None:
    """Our PIL images equal the stock pipeline's within one 8-bit level."""
    mine = np.stack([np.asarray(im) for im in images]).astype(np.float64)
    assert np.abs(mine - np.round(ref * 255)).max() <= 1, msg


@pytest.fixture(scope="module")
def pcm_dir(tmp_path_factory):
    return build_micro_pcm(tmp_path_factory.mktemp("sampling_pcm"), K)


@pytest.mark.parametrize(
    "saved, stock_class",
    [("lcm_dir", "LatentConsistencyModelPipeline"), ("pcm_dir", "StableDiffusionPipeline")],
)
def test_generate_matches_stock_pipeline_images(saved, stock_class, request):
    """Seeded end to end: prompt -> noise from the generator -> steps -> VAE -> pixels; a
    phased student is a stock StableDiffusionPipeline with its TCDScheduler."""
    import diffusers

    directory = request.getfixturevalue(saved)
    stock = getattr(diffusers, stock_class).from_pretrained(directory)
    stock.set_progress_bar_config(disable=True)
    ref = stock_pixels(stock, PROMPTS[2], steps=4, seed=11, n=3, guidance_scale=3.0)
    images, _ = generate(
        load_consistency_pipeline(directory), PROMPTS[2], steps=4, guidance_scale=3.0, seed=11,
        num_images=3,
    )  # fmt: skip
    assert len(images) == 3 and images[0].size == (IMAGE_SIZE, IMAGE_SIZE)
    assert_same_pixels(images, ref)
    again, _ = generate(
        load_consistency_pipeline(directory), PROMPTS[2], steps=4, guidance_scale=3.0, seed=11,
        num_images=3,
    )  # fmt: skip
    assert all(a.tobytes() == b.tobytes() for a, b in zip(images, again, strict=True))
    assert image_grid(images, pad=0).size == (2 * IMAGE_SIZE, 2 * IMAGE_SIZE)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_tcd_gamma_matches_stock_sd_pipeline_with_tcd_scheduler(lcm_dir, gamma):
    """``generate(gamma=)`` on an LCM-saved student is stock diffusers' TCD: the SD pipeline
    on the same components, a TCDScheduler from the saved config, ``eta=gamma``, one seed."""
    from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline, TCDScheduler

    lcm = LatentConsistencyModelPipeline.from_pretrained(lcm_dir)
    stock = StableDiffusionPipeline(**lcm.components, requires_safety_checker=False)
    stock.scheduler = TCDScheduler.from_config(lcm.scheduler.config, steps_offset=1)
    stock.set_progress_bar_config(disable=True)
    pipe = load_consistency_pipeline(lcm_dir)
    for steps in (1, 2, 4):
        ref = stock_pixels(stock, PROMPTS[1], steps=steps, seed=5, n=2, eta=gamma)
        images, _ = generate(pipe, PROMPTS[1], steps=steps, seed=5, num_images=2, gamma=gamma)
        assert_same_pixels(images, ref, f"steps={steps}")
    # gamma changes the multistep images (not the one-step ones: no noise is injected there)
    by_gamma = {g: generate(pipe, PROMPTS[1], steps=4, seed=5, gamma=g)[1] for g in (0.0, 0.5, 1.0)}
    assert not torch.allclose(by_gamma[0.0], by_gamma[0.5])
    assert not torch.allclose(by_gamma[0.5], by_gamma[1.0])
    one = [generate(pipe, PROMPTS[1], steps=1, seed=5, gamma=g)[1] for g in (0.0, 1.0)]
    assert torch.equal(*one)
    with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\]"):
        generate(pipe, PROMPTS[1], steps=2, gamma=1.5)


def test_generate_rejects_bad_steps(lcm_dir):
    pipe = load_consistency_pipeline(lcm_dir)
    for steps in (0, 1000 // K + 1):
        with pytest.raises(ValueError, match="steps must be between 1 and 50"):
            generate(pipe, "x", steps=steps)


def test_sampler_timesteps_read_the_students_metadata():
    meta = {"timesteps": {"1": [399]}}
    assert sampler_timesteps(meta, 1) == [399]
    assert sampler_timesteps(meta, 4) is None and sampler_timesteps({}, 1) is None
    with pytest.raises(ValueError, match="lists 1 timesteps for 2 steps"):
        sampler_timesteps({"timesteps": {"2": [399]}}, 2)


def test_save_requires_a_student_and_a_teacher(tmp_path, lcm_dir):
    from micro_sd import micro_unet

    with pytest.raises(FileNotFoundError, match="model_index.json"):
        save_consistency_pipeline(
            make_student(micro_unet(), 8), tmp_path / "nope", tmp_path / "o", K
        )
    with pytest.raises(ValueError, match="no guidance projection"):
        save_consistency_pipeline(micro_unet(), lcm_dir, tmp_path / "o", K)
