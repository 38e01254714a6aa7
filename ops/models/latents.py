"""Stage ``latents``: encode the base training images once, cache the prompt embeddings.

Every training step of the teacher and of the distilled models would otherwise run the VAE
encoder and the text encoder; both are frozen, so their outputs are computed here once.

- Images: the train split minus held-out families, ordered by ``image_id``, encoded to the
  posterior *mean* times the VAE's ``scaling_factor``. Why the mean and not a sample: the cache
  is computed once, and one frozen random draw would be noise baked into the data for every
  epoch, while the mean is the deterministic centre of the posterior. With SD's tiny KL weight
  the posterior std is small against the latents' spread, so the mean loses almost nothing.
- Prompts: the frozen text encoder's output for every distinct prompt plus the empty prompt
  ``""`` (the unconditional input of classifier-free guidance).

Files (see ``ops.training.latent_data``) are written atomically: shards as ``*.tmp`` then
renamed, so an interrupted run leaves only complete shards, and the next run skips every shard
whose metadata matches (same fingerprint, same image ids). ``fingerprint.json`` is written
last; when it matches the inputs (training rows of the manifest, VAE and text files, config)
and every file is present, the stage does no work at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ops.config import stage_config
from ops.layout import DataLayout
from ops.models.presets import encode_prompts
from ops.training.fingerprint import config_fingerprint, directory_hash
from ops.training.image_data import (
    base_training_rows,
    iter_image_batches,
    read_manifest,
    rows_hash,
    to_model_range,
)
from ops.training.latent_data import (
    EMPTY_PROMPT,
    FINGERPRINT_FILE,
    INDEX_FILE,
    PROMPT_EMBEDS_FILE,
    PromptEmbeddings,
    read_shard_metadata,
    shard_name,
)
from ops.training.runtime import on_main_process, torch_threads

STAGE = "latents"
BASE_MODEL = "base"
LATENT_DTYPE = torch.float16  # halves disk and memory; fp16's ~1e-3 precision is far below
# the noise the diffusion objective adds


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def input_fingerprint(
    cfg: dict[str, Any], layout: DataLayout, rows: pd.DataFrame
) -> dict[str, str]:
    """Everything the latents depend on, as hashes; ``key`` combines them."""
    base = layout.model(BASE_MODEL)
    inputs = {
        "manifest": rows_hash(rows),
        "vae": directory_hash(base / "vae"),
        "text": directory_hash(base / "tokenizer", base / "text_encoder"),
    }
    inputs["config"] = config_fingerprint(cfg, ignore={"encode_batch_size", "seed"})
    inputs["key"] = config_fingerprint({}, *inputs.values())
    return inputs


def ids_hash(image_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(image_ids).encode()).hexdigest()[:16]


def shard_plan(rows: pd.DataFrame, shard_size: int) -> list[pd.DataFrame]:
    return [rows.iloc[i : i + shard_size] for i in range(0, len(rows), shard_size)]


def is_up_to_date(out: Path, fingerprint: dict[str, str], shards: int) -> bool:
    """The fingerprint file matches and every output file exists."""
    fp_file = out / FINGERPRINT_FILE
    if not fp_file.is_file() or json.loads(fp_file.read_text()) != fingerprint:
        return False
    needed = [INDEX_FILE, PROMPT_EMBEDS_FILE] + [shard_name(i) for i in range(shards)]
    return all((out / name).is_file() for name in needed)


def write_atomically(path: Path, write) -> None:
    """``write(tmp_path)`` then rename: readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


@torch.no_grad()
def encode_shard(vae, layout: DataLayout, rows: pd.DataFrame, batch_size: int) -> torch.Tensor:
    """Posterior means times the scaling factor, ``[n, C, h, w]`` in ``LATENT_DTYPE``."""
    dev = next(vae.parameters()).device
    parts = []
    for _, batch in iter_image_batches(layout, rows, batch_size):
        mean = vae.encode(to_model_range(batch).to(dev, vae.dtype)).latent_dist.mean
        parts.append((mean * vae.config.scaling_factor).to("cpu", LATENT_DTYPE))
    return torch.cat(parts).contiguous()


def load_text_components(base: Path):
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(base / "text_encoder", use_safetensors=True)
    return tokenizer, encoder.to(device()).eval()


def build_latents(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Write ``latents/`` (resumable, skipped when up to date); return the stage summary.

    Single-process work: under a multi-process launch the main process encodes, the others wait.
    """
    threads = stage_config(params, STAGE).get("threads")
    with torch_threads(threads):
        return on_main_process(lambda: encode_latents(params, layout))


def encode_latents(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    began = time.perf_counter()
    cfg = stage_config(params, STAGE)
    out = layout.latents
    rows = base_training_rows(read_manifest(layout))
    if rows.empty:
        raise ValueError("no base training images (train split without holdout) to encode")
    plan = shard_plan(rows, int(cfg["shard_size"]))
    fingerprint = input_fingerprint(cfg, layout, rows)
    summary: dict[str, Any] = {
        "images": len(rows),
        "shards": len(plan),
        "classes": int(rows["class_name"].nunique()),
        "fingerprint": fingerprint["key"],
        "latents_dir": str(out),
    }
    if is_up_to_date(out, fingerprint, len(plan)):
        return {
            **summary,
            "skipped": True,
            "shards_written": 0,
            "latent_shape": list(encode_shape(out)),
            "seconds": time.perf_counter() - began,
        }

    from diffusers import AutoencoderKL

    out.mkdir(parents=True, exist_ok=True)
    (out / FINGERPRINT_FILE).unlink(missing_ok=True)  # stale until everything is rewritten
    base = layout.model(BASE_MODEL)
    vae = AutoencoderKL.from_pretrained(base / "vae", use_safetensors=True).to(device()).eval()
    written, index = 0, []
    for number, shard_rows in enumerate(tqdm(plan, desc="latents", unit="shard")):
        name = shard_name(number)
        ids = shard_rows["image_id"].tolist()
        meta = {"fingerprint": fingerprint["key"], "ids": ids_hash(ids), "count": str(len(ids))}
        if read_shard_metadata(out / name) != meta:
            latents = encode_shard(vae, layout, shard_rows, int(cfg["encode_batch_size"]))
            write_atomically(
                out / name, lambda p, t=latents, m=meta: save_file({"latents": t}, str(p), m)
            )
            written += 1
        index.append(
            pd.DataFrame(
                {
                    "image_id": ids,
                    "shard": name,
                    "row": range(len(ids)),
                    "class_name": shard_rows["class_name"].tolist(),
                    "prompt": shard_rows["prompt"].tolist(),
                }
            )
        )
    for stale in sorted(out.glob("shard-*.safetensors"))[len(plan) :]:
        stale.unlink()

    tokenizer, encoder = load_text_components(base)
    prompts = [EMPTY_PROMPT] + sorted(set(rows["prompt"]) - {EMPTY_PROMPT})
    embeds = PromptEmbeddings(prompts, encode_prompts(tokenizer, encoder, prompts))
    write_atomically(out / PROMPT_EMBEDS_FILE, embeds.save)
    write_atomically(out / INDEX_FILE, lambda p: pd.concat(index).to_parquet(p, index=False))
    write_atomically(
        out / FINGERPRINT_FILE, lambda p: p.write_text(json.dumps(fingerprint, indent=1))
    )
    seconds = time.perf_counter() - began
    return {
        **summary,
        "skipped": False,
        "shards_written": written,
        "latent_shape": list(encode_shape(out)),
        "prompts": len(prompts),
        "seconds": seconds,
        "images_per_second": len(rows) / seconds,
    }


def encode_shape(out: Path) -> tuple[int, ...]:
    from safetensors import safe_open

    with safe_open(str(out / shard_name(0)), "pt") as fh:
        return tuple(fh.get_slice("latents").get_shape()[1:])
