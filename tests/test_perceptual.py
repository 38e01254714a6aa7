"""The VAE's perceptual term: a feature network trained here, and its distance."""

from __future__ import annotations

import pytest
import torch

from ops.models.autoencoder import VaeObjective
from ops.models.perceptual import FeatureNet, perceptual_distance, train_feature_net

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spots(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey 32-px images in [-1, 1]; label 1 has one bright 2-px spot somewhere, like a stone."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 3, 32, 32), -0.2) + 0.05 * torch.randn(n, 3, 32, 32, generator=g)
    y = torch.arange(n) % 2
    for i in torch.nonzero(y).flatten().tolist():
        r, c = torch.randint(4, 28, (2,), generator=g).tolist()
        x[i, :, r : r + 2, c : c + 2] = 0.9
    return x, y


def test_feature_net_learns_a_two_pixel_finding_and_is_frozen():
    x, y = spots(128, seed=0)
    net, train_accuracy = train_feature_net(x, y, 2, epochs=8, batch_size=32, widths=(8, 16))
    test_x, test_y = spots(64, seed=1)
    accuracy = float((net(test_x).argmax(1) == test_y).float().mean())
    assert train_accuracy > 0.8 and accuracy > 0.9, (train_accuracy, accuracy)
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_distance_is_zero_on_itself_and_sees_an_erased_spot():
    torch.manual_seed(0)
    net = FeatureNet(2, (8, 16)).eval()
    x, y = spots(4, seed=2)
    assert float(perceptual_distance(net, x, x)) == pytest.approx(0.0, abs=1e-6)
    erased = x.clone()
    erased[y == 1] = -0.2  # the spot (and the noise) gone
    assert float(perceptual_distance(net, erased, x)) > 0


def test_vae_objective_adds_the_term_and_trains_only_the_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
        sample_size=32,
    )  # fmt: skip
    net = FeatureNet(2, (8, 16)).eval().requires_grad_(False)
    x, _ = spots(2, seed=3)
    eps = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = VaeObjective(vae, 1e-6)(x, eps)
    with_term = VaeObjective(vae, 1e-6, perceptual=net, perceptual_weight=0.5)(x, eps)
    assert with_term > plain
    with_term.backward()
    assert all(p.grad is None for p in net.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.parameters())
