"""Model presets: the offline tokenizer, components built from config, the pretrained path."""

from __future__ import annotations

import torch
from model_fixtures import CLASSES
from transformers import CLIPTokenizer

from ops.config import stage_config
from ops.data.prompts import build_prompt
from ops.models.presets import (
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    ddim_scheduler,
    ddpm_scheduler,
    encode_prompts,
)
from ops.models.tokenizer import BOS, EOS, byte_symbols

PROMPTS = [build_prompt(labels) for labels, _, _ in CLASSES.values()]


def test_tokenizer_loads_as_clip_and_round_trips_prompts(tmp_path, micro_params):
    cfg = stage_config(micro_params, "text")
    build_tokenizer(cfg, PROMPTS, tmp_path / "tok")
    assert (tmp_path / "tok" / "vocab.json").is_file() and (
        tmp_path / "tok" / "merges.txt"
    ).is_file()
    tok = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.model_max_length == cfg["max_length"]
    vocab = tok.get_vocab()
    # CLIP's layout: byte symbols first, specials last
    assert [vocab[s] for s in byte_symbols()[:3]] == [0, 1, 2]
    assert vocab[BOS] == len(vocab) - 2 and vocab[EOS] == len(vocab) - 1
    for prompt in PROMPTS + ["an unseen word: zebra-42"]:
        ids = tok(prompt).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.unk_token_id not in ids[1:-1]
        text = tok.decode(ids, skip_special_tokens=True)
        assert text.replace(" ", "") == prompt.lower().replace(" ", "")
        assert tok(text).input_ids == ids
    # training prompts' words are single tokens, as in CLIP's vocabulary
    assert tok.tokenize("glioma") == ["glioma</w>"]


def test_text_encoder_is_frozen_deterministic_and_separates_prompts(tmp_path, micro_params):
    cfg = stage_config(micro_params, "text")
    tok = build_tokenizer(cfg, PROMPTS, tmp_path / "tok")
    a = build_text_encoder(cfg, tok, seed=0)
    b = build_text_encoder(cfg, tok, seed=0)
    assert not any(p.requires_grad for p in a.parameters())
    ea, eb = encode_prompts(tok, a, PROMPTS + [""]), encode_prompts(tok, b, PROMPTS + [""])
    assert ea.shape == (len(PROMPTS) + 1, cfg["max_length"], cfg["hidden_size"])
    assert torch.equal(ea, eb)
    flat = ea.flatten(1)
    distances = torch.cdist(flat, flat) + torch.eye(len(flat)) * 1e9
    assert distances.min() > 1e-3  # every prompt maps to its own embedding


def test_micro_components_fit_together(micro_params):
    vae_cfg = {**stage_config(micro_params, "autoencoder"), "resolution": 32}
    vae = build_vae(vae_cfg)
    latents = vae.encode(torch.randn(2, 3, 32, 32)).latent_dist.mean
    assert latents.shape == (2, vae_cfg["latent_channels"], 16, 16)
    assert vae.decode(latents).sample.shape == (2, 3, 32, 32)
    text_dim = stage_config(micro_params, "text")["hidden_size"]
    unet = build_unet(
        stage_config(micro_params, "teacher"),
        sample_size=16,
        in_channels=4,
        cross_attention_dim=text_dim,
    )
    out = unet(latents, torch.tensor([10, 900]), encoder_hidden_states=torch.randn(2, 5, text_dim))
    assert out.sample.shape == latents.shape


def test_pretrained_source_loads_the_same_weights(tmp_path, micro_params):
    """sd15's code path (``source: pretrained``) on a local directory with SD's layout."""
    root = tmp_path / "sd"
    text_cfg = stage_config(micro_params, "text")
    tok = build_tokenizer(text_cfg, PROMPTS, root / "tokenizer")
    enc = build_text_encoder(text_cfg, tok, seed=3)
    enc.save_pretrained(root / "text_encoder")
    vae = build_vae({**stage_config(micro_params, "autoencoder"), "resolution": 32})
    vae.save_pretrained(root / "vae")
    unet_cfg = stage_config(micro_params, "teacher")
    unet = build_unet(unet_cfg, sample_size=16, in_channels=4, cross_attention_dim=32)
    unet.save_pretrained(root / "unet")

    pretrained = {"source": "pretrained", "pretrained": str(root)}
    tok2 = build_tokenizer(pretrained, [], tmp_path / "unused")
    assert tok2(PROMPTS[0]).input_ids == tok(PROMPTS[0]).input_ids
    enc2 = build_text_encoder(pretrained, tok2, seed=0)
    assert torch.equal(enc2.get_input_embeddings().weight, enc.get_input_embeddings().weight)
    vae2 = build_vae(pretrained)
    assert torch.equal(vae2.encoder.conv_in.weight, vae.encoder.conv_in.weight)
    unet2 = build_unet(
        {"pretrained": str(root)}, sample_size=0, in_channels=0, cross_attention_dim=0
    )
    assert torch.equal(unet2.conv_in.weight, unet.conv_in.weight)


def test_noise_schedule_is_stable_diffusions():
    ddpm, ddim = ddpm_scheduler(), ddim_scheduler()
    assert ddpm.config.num_train_timesteps == 1000
    assert torch.isclose(ddpm.betas[0], torch.tensor(0.00085))
    assert torch.isclose(ddpm.betas[-1], torch.tensor(0.012))
    # SD v1's final cumulative alpha (scaled_linear 0.00085..0.012): about 0.0047
    assert abs(float(ddpm.alphas_cumprod[-1]) - 0.0047) < 2e-4
    assert torch.equal(ddim.alphas_cumprod, ddpm.alphas_cumprod)
    assert ddim.config.prediction_type == "epsilon" and ddim.config.steps_offset == 1
