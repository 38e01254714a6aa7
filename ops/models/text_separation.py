"""Prompt separation of the offline presets' text encoder: measured, and trained apart.

The tiny presets' CLIP text encoder is randomly initialised (no pretrained CLIP offline). Under
it, a family's healthy and diseased prompts ("CT of a human kidney, normal" / "..., kidney
stone") differ in one or two of 24 token positions, and their embeddings are nearly the same:
cosine 0.96-0.99 over the whole sequence, 0.90-0.95 even at the differing token. The UNet has
to amplify that sliver of difference through cross-attention before it can draw the diagnosis.

``separate_prompts`` trains the encoder for a few hundred steps, on the prompts alone (no
images, seconds on a CPU), to make every pair of prompts' sequence embeddings orthogonal: the
loss is the mean squared cosine similarity over pairs of distinct prompts. It runs once in the
autoencoder stage, before the encoder is frozen and saved, so everything downstream (the cached
prompt embeddings, the teacher, the students, the pipelines) sees a fixed encoder as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def _token_ids(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def pairwise_cosine(encoder, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Cosine similarities ``[P, P]`` of the prompts' flattened last hidden states."""
    seq = encoder(_token_ids(tokenizer, prompts).to(encoder.device))[0].flatten(1)
    unit = F.normalize(seq.float(), dim=1)
    return unit @ unit.T


def family_pairs(labels: Sequence[dict[str, str]]) -> list[tuple[int, int]]:
    """Index pairs of prompts that share everything but the disease (a family's classes)."""
    keys = [(d.get("species"), d.get("body_part"), d.get("modality")) for d in labels]
    return [(i, j) for i in range(len(keys)) for j in range(i + 1, len(keys)) if keys[i] == keys[j]]


@torch.no_grad()
def separation_report(
    encoder, tokenizer, prompts: Sequence[str], pairs: Sequence[tuple[int, int]]
) -> dict[str, Any]:
    """Mean and max cosine over the family pairs, and the mean over all distinct pairs."""
    cos = pairwise_cosine(encoder, tokenizer, prompts).cpu()
    off = cos[~torch.eye(len(prompts), dtype=torch.bool)]
    fam = torch.tensor([float(cos[i, j]) for i, j in pairs]) if pairs else torch.zeros(0)
    return {
        "family_pair_cosine_mean": float(fam.mean()) if len(fam) else None,
        "family_pair_cosine_max": float(fam.max()) if len(fam) else None,
        "all_pairs_cosine_mean": float(off.mean()) if len(off) else None,
    }


def separate_prompts(
    encoder, tokenizer, prompts: Sequence[str], *, steps: int, learning_rate: float, seed: int
) -> list[float]:
    """Train ``encoder`` in place so distinct prompts' embeddings are orthogonal; loss curve.

    The encoder comes back frozen and in eval mode, as ``build_text_encoder`` returns it.
    """
    if steps <= 0 or len(prompts) < 2:
        return []
    ids = _token_ids(tokenizer, prompts).to(encoder.device)
    mask = ~torch.eye(len(prompts), dtype=torch.bool, device=encoder.device)
    encoder.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=learning_rate, weight_decay=0.0)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            unit = F.normalize(encoder(ids)[0].flatten(1).float(), dim=1)
            loss = ((unit @ unit.T)[mask] ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    encoder.requires_grad_(False).eval()
    return losses
