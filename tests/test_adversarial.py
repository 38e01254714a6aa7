"""DMD2's adversarial term (``ops.distill.adversarial``): the non-saturating losses against
torch's binary cross-entropy, the frozen discriminator the generator trains through, the
bottleneck features, and the term inside one DMD2 step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ops.distill.adversarial import (
    BottleneckHead,
    bottleneck_channels,
    discriminator_features,
    discriminator_loss,
    frozen_call,
    generator_loss,
)
from ops.distill.consistency import guidance_embedding, make_student
from ops.distill.dmd import GeneratorAndFakeScore, dmd_losses
from ops.distill.schedule import noise_to, sd_alphas_cumprod

ALPHAS = sd_alphas_cumprod(1000)


def test_losses_are_binary_cross_entropy_on_the_logits():
    """L_D = BCE(D(gen), 0) + BCE(D(real), 1); L_G = BCE(D(gen), 1) (non-saturating GAN)."""
    gen, real = torch.randn(7), torch.randn(7)
    bce = F.binary_cross_entropy_with_logits
    expected_d = bce(gen, torch.zeros(7)) + bce(real, torch.ones(7))
    torch.testing.assert_close(discriminator_loss(gen, real), expected_d)
    torch.testing.assert_close(generator_loss(gen), bce(gen, torch.ones(7)))
    # a discriminator that is sure and right has a small loss; the fooled one a large one
    assert discriminator_loss(torch.full((3,), -9.0), torch.full((3,), 9.0)) < 1e-3
    assert generator_loss(torch.full((3,), -9.0)) > 8.9


def test_frozen_call_passes_gradient_to_inputs_only():
    """Same output as the module; the input gets the gradient, the parameters none."""
    torch.manual_seed(0)
    head = BottleneckHead(16)
    features = torch.randn(3, 16, 2, 2, requires_grad=True)
    out = frozen_call(head, features)
    torch.testing.assert_close(out, head(features))
    out.sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert all(p.grad is None for p in head.parameters())


@pytest.fixture(scope="module")
def unet():
    from micro_sd import micro_unet

    return micro_unet()


def test_bottleneck_features_are_the_mid_block_output(unet):
    """One logit per sample from the widest level's features, conditioned on the prompt."""
    from micro_sd import CROSS_DIM

    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    prompts = torch.randn(2, 4, CROSS_DIM)
    features = discriminator_features(unet, x_t, t, prompts)
    assert features.shape == (2, bottleneck_channels(unet), 4, 4)
    other = discriminator_features(unet, x_t, t, torch.randn(2, 4, CROSS_DIM))
    assert not torch.allclose(features, other)  # the prompt reaches D through cross-attention
    assert BottleneckHead(bottleneck_channels(unet))(features).shape == (2,)


def test_generator_loss_moves_the_generator_output_and_never_the_discriminator(unet):
    """The generator's L_G through a frozen D: gradient on x0, none on the UNet or head."""
    from micro_sd import CROSS_DIM

    fake = copy.deepcopy(unet).requires_grad_(True)
    head = BottleneckHead(bottleneck_channels(fake))
    x0 = torch.randn(2, 4, 8, 8, requires_grad=True)
    t = torch.tensor([100, 700])
    x_t = noise_to(x0, torch.randn(2, 4, 8, 8), t, ALPHAS)
    features = discriminator_features(fake, x_t, t, torch.randn(2, 4, CROSS_DIM), frozen=True)
    generator_loss(frozen_call(head, features)).backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0
    assert all(p.grad is None for p in [*fake.parameters(), *head.parameters()])


def test_dmd_step_with_the_adversarial_term_trains_each_network_by_its_losses(unet):
    """gan_weight > 0: the head and fake score learn on every step (d_loss), the generator
    on generator steps (dm_loss + g_loss); a step without real latents is refused."""
    from micro_sd import CROSS_DIM

    teacher = unet.requires_grad_(False).eval()
    generator = make_student(teacher, 16)
    pair = GeneratorAndFakeScore(generator, copy.deepcopy(teacher).requires_grad_(True),
                                 adversarial=True)  # fmt: skip
    prompts = torch.randn(2, 4, CROSS_DIM, generator=torch.Generator().manual_seed(3))
    cfg = {"min_t": 0.02, "max_t": 0.98, "num_train_timesteps": 1000, "gan_weight": 0.1}
    w = torch.full((2,), 3.0)
    kwargs = dict(alphas_cumprod=ALPHAS, w_emb=guidance_embedding(w, 16), w=w,
                  timesteps=[999, 499], real_latents=torch.randn(2, 4, 8, 8))  # fmt: skip
    for update_generator in (False, True):
        pair.zero_grad(set_to_none=True)
        loss, logs = dmd_losses(
            pair, teacher, (2, 4, 8, 8), prompts, torch.zeros_like(prompts[:1]), cfg,
            torch.Generator().manual_seed(0), update_generator=update_generator, **kwargs,
        )  # fmt: skip
        loss.backward()
        assert logs["d_loss"] > 0
        assert all(p.grad is not None for p in pair.head.parameters())
        gen_grads = [p.grad for p in pair.generator.parameters() if p.grad is not None]
        assert bool(gen_grads) == update_generator
        assert ("g_loss" in logs) == update_generator
    assert len(pair.critic_parameters()) == len(list(pair.fake.parameters())) + len(
        list(pair.head.parameters())
    )
    with pytest.raises(ValueError, match="real_latents"):
        dmd_losses(pair, teacher, (2, 4, 8, 8), prompts, torch.zeros_like(prompts[:1]), cfg,
                   None, update_generator=False,
                   **{**kwargs, "real_latents": None})  # fmt: skip
