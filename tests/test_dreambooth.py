"""DreamBooth pieces: the identifier prompt, the two-term loss, and a micro fine-tuning run."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from ops.baselines.dreambooth import (
    dreambooth_loss,
    finetune_dreambooth,
    prior_preservation_loss,
)
from ops.data.prompts import rare_token_prompt


def test_rare_token_prompt():
    prompt = "chest X-ray of a human chest, cardiomegaly"
    assert rare_token_prompt(prompt) == "a sks chest X-ray of a human chest, cardiomegaly"
    assert rare_token_prompt("a chest X-ray") == "a sks chest X-ray"
    assert rare_token_prompt("An MRI  scan", identifier="zwx") == "a zwx MRI scan"
    assert rare_token_prompt(rare_token_prompt(prompt)) == rare_token_prompt(prompt)


def test_loss_equals_hand_computed_two_terms():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [1.0, 1.0]])
    target = torch.tensor([[0.0, 2.0], [3.0, 2.0], [1.0, 0.0], [1.0, 4.0]])
    instance = (1**2 + 0 + 0 + 2**2) / 4  # first two rows
    prior = (1**2 + 0 + 0 + 3**2) / 4  # last two rows
    got = prior_preservation_loss(pred, target, prior_weight=0.5)
    assert got.item() == pytest.approx(instance + 0.5 * prior)
    assert prior_preservation_loss(pred, target, 0.0).item() == pytest.approx(instance)
    uneven = prior_preservation_loss(pred, target, 1.0, num_instance=1)
    assert uneven.item() == pytest.approx(1 / 2 + (0 + 4 + 1 + 0 + 0 + 9) / 6)
    with pytest.raises(ValueError, match="halves"):
        prior_preservation_loss(pred[:3], target[:3], 1.0)


def test_prior_weight_zero_is_instance_loss_on_random_tensors():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    expected = torch.mean((pred[:3] - target[:3]) ** 2)
    assert torch.allclose(prior_preservation_loss(pred, target, 0.0), expected)


def _micro_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )


def test_a_few_steps_reduce_the_loss(one_torch_thread):
    unet, scheduler = _micro_unet(), DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(1)
    instance = torch.randn(3, 4, 8, 8, generator=g)
    prior = torch.randn(3, 4, 8, 8, generator=g)
    inst_embeds, prior_embeds = (
        torch.randn(1, 5, 32, generator=g),
        torch.randn(1, 5, 32, generator=g),
    )

    # a fixed evaluation batch: same noise and timesteps before and after training
    latents = torch.cat([instance, prior])
    embeds = torch.cat([inst_embeds.expand(3, -1, -1), prior_embeds.expand(3, -1, -1)])
    noise = torch.randn(latents.shape, generator=g)
    timesteps = torch.randint(0, 1000, (6,), generator=g)

    def eval_loss() -> float:
        with torch.no_grad():
            loss = dreambooth_loss(unet, scheduler, latents, embeds, noise, timesteps, 3, 1.0)
        return loss.item()

    before = eval_loss()
    unet, losses = finetune_dreambooth(
        unet,
        scheduler,
        instance,
        inst_embeds,
        prior,
        prior_embeds,
        steps=15,
        lr=2e-3,
        prior_weight=1.0,
        generator=torch.Generator().manual_seed(2),
        batch_size=3,
    )
    assert len(losses) == 15 and not unet.training
    after = eval_loss()
    assert after < 0.8 * before, (before, after)
    assert sum(losses[-5:]) < sum(losses[:5])
