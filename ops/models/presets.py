"""Model components per preset: built from config (``tiny``/``micro``) or loaded (``sd15``).

Every component goes through the same function whatever the preset, and only sizes and where
the weights come from differ: ``source: train`` (or no ``pretrained`` key) builds from the
sizes in ``presets.<name>.<stage>``; ``source: pretrained`` loads ``<pretrained>/<subfolder>``
from a local directory or a hub id, safetensors only.

Stable Diffusion's noise schedule (Rombach et al. 2022; DDPM, Ho et al. 2020) is fixed here
too: 1000 steps, ``scaled_linear`` betas from 0.00085 to 0.012, epsilon prediction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

# Stable Diffusion v1's training schedule (its scheduler_config.json).
SD_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
# What SD v1 pipelines ship for DDIM: no clipping, last alpha not forced to one, offset 1.
SD_DDIM_EXTRAS: dict[str, Any] = {
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def is_pretrained(cfg: Mapping[str, Any]) -> bool:
    """Whether a stage section asks for pretrained weights rather than a model built here."""
    return cfg.get("source", "pretrained" if cfg.get("pretrained") else "train") == "pretrained"


def _pretrained_path(cfg: Mapping[str, Any]) -> str:
    path = cfg.get("pretrained")
    if not path:
        raise ValueError("source is 'pretrained' but no 'pretrained' directory or hub id is set")
    return str(path)


def _norm_groups(channels: Iterable[int], min_group_width: int = 4) -> int:
    """GroupNorm groups: as many as SD's 32, but at least ``min_group_width`` channels each.

    SD's narrowest blocks (128 channels) have 4 channels per group; very narrow models keep
    that width rather than the group count, since single-channel groups (instance norm) would
    erase each image's per-channel intensity and colour.
    """
    channels = list(channels)
    groups = math.gcd(32, *channels)
    while groups > 1 and min(channels) // groups < min_group_width:
        groups //= 2
    return groups


# --- autoencoder -------------------------------------------------------------------------------
def build_vae(cfg: Mapping[str, Any]):
    """An ``AutoencoderKL``: SD's VAE architecture at ``block_out_channels`` widths, or loaded.

    Each block after the first halves the resolution, so the latent side is
    ``resolution / 2 ** (len(block_out_channels) - 1)`` (SD: 4 blocks, factor 8).
    """
    from diffusers import AutoencoderKL

    if is_pretrained(cfg):
        return AutoencoderKL.from_pretrained(
            _pretrained_path(cfg), subfolder=cfg.get("subfolder", "vae"), use_safetensors=True
        )
    channels = list(cfg["block_out_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=tuple(channels),
        layers_per_block=int(cfg.get("layers_per_block", 1)),
        latent_channels=int(cfg["latent_channels"]),
        norm_num_groups=_norm_groups(channels),
        sample_size=int(cfg.get("resolution", 64)),
    )


def vae_downsample_factor(vae) -> int:
    """Pixels per latent cell along one side (SD's VAE: 8)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


# --- text --------------------------------------------------------------------------------------
def build_tokenizer(cfg: Mapping[str, Any], prompts: Iterable[str], directory: Path):
    """The CLIP tokenizer: SD's (pretrained) or a BPE trained here on ``prompts``.

    ``directory`` receives the trained tokenizer's files (unused for pretrained ones).
    """
    from transformers import CLIPTokenizer

    if is_pretrained(cfg):
        return CLIPTokenizer.from_pretrained(_pretrained_path(cfg), subfolder="tokenizer")
    from ops.models.tokenizer import train_clip_tokenizer

    return train_clip_tokenizer(
        prompts, int(cfg["vocab_size"]), int(cfg["max_length"]), Path(directory)
    )


def build_text_encoder(cfg: Mapping[str, Any], tokenizer, seed: int):
    """A frozen ``CLIPTextModel``: SD's, or a randomly initialised one with a fixed seed.

    Why random and frozen for the offline presets: no pretrained CLIP can be fetched offline,
    and training a text encoder is out of scope at that scale. A frozen random transformer is a
    fixed, deterministic map under which distinct prompts still get distinct token embeddings;
    the UNet's cross-attention learns to read them (prompts differ in a few words, and those
    tokens' embeddings differ). Frozen also means the prompt embeddings can be cached once by
    the latents stage, as for SD, whose CLIP encoder stays frozen during fine-tuning.
    The random map leaves a family's healthy and diseased prompts at cosine ~0.97, though, so
    the autoencoder stage trains it apart on the prompts before saving (``ops.text_separation``).
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    if is_pretrained(cfg):
        model = CLIPTextModel.from_pretrained(
            _pretrained_path(cfg), subfolder="text_encoder", use_safetensors=True
        )
    else:
        hidden = int(cfg["hidden_size"])
        config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            projection_dim=hidden,
            num_hidden_layers=int(cfg["num_layers"]),
            num_attention_heads=int(cfg["num_heads"]),
            max_position_embeddings=int(cfg["max_length"]),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPTextModel(config)
    model.requires_grad_(False)
    return model.eval()


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], batch_size: int = 64):
    """SD's conditioning: the text encoder's last hidden state for ``model_max_length`` tokens."""
    device = next(text_encoder.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        ids = tokenizer(
            prompts[start : start + batch_size],
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        out.append(text_encoder(ids)[0].float().cpu())
    return torch.cat(out)


# --- UNet --------------------------------------------------------------------------------------
def build_unet(
    cfg: Mapping[str, Any], *, sample_size: int, in_channels: int, cross_attention_dim: int
):
    """SD's ``UNet2DConditionModel``: loaded, or built at ``block_out_channels`` widths.

    Built as SD's layout scaled down: cross-attention in every block except the lowest
    resolution one (SD: 3 of 4), ``layers_per_block`` ResNets per block, and
    ``attention_head_dim`` heads (diffusers' name for SD's head count). With
    ``top_attention: false`` the highest-resolution block is plain ResNets too: on 16x16
    latents its attention over 256 positions was measured to cost more than the rest of the
    UNet, while the conditioning still reaches every level below it.
    """
    from diffusers import UNet2DConditionModel

    if is_pretrained(cfg):
        return UNet2DConditionModel.from_pretrained(
            _pretrained_path(cfg), subfolder="unet", use_safetensors=True
        )
    channels = list(cfg["block_out_channels"])
    attention = [True] * (len(channels) - 1) + [False]
    if not cfg.get("top_attention", True):
        attention[0] = False
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(channels),
        layers_per_block=int(cfg["layers_per_block"]),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=int(cfg["attention_head_dim"]),
        norm_num_groups=_norm_groups(channels),
    )


# --- schedulers --------------------------------------------------------------------------------
def ddpm_scheduler():
    """The training noise schedule (``add_noise``), SD's betas."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SD_SCHEDULE, clip_sample=False)


def ddim_scheduler():
    """The sampling scheduler saved with the teacher pipeline: DDIM on SD's schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD_SCHEDULE, **SD_DDIM_EXTRAS)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
