"""The latents stage's files, and a dataset over them with prompt dropout.

Layout of ``latents/`` (written by ``ops.models.latents``):

- ``shard-00000.safetensors``   tensor ``latents`` ``[n, C, h, w]`` (float16), already
  multiplied by the VAE's ``scaling_factor``; metadata: fingerprint, hash of its image ids
- ``index.parquet``             one row per latent: image_id, shard, row, class_name, prompt
- ``prompt_embeds.safetensors`` tensor ``embeds`` ``[P, L, D]``: the frozen text encoder's
  output for every distinct prompt, the empty prompt ``""`` first (classifier-free guidance);
  metadata ``prompts``: the JSON list of the P prompts
- ``fingerprint.json``          inputs the files were computed from (see ``ops.models.latents``)
- ``replay.json`` (optional)    latents of another latents directory trained on alongside these:
  ``{"directory": <path relative to this one>, "image_ids": [...]}``. A fine-tune replays a
  share of the base training set this way (``ops.finetune.replay``), so the base classes are
  not forgotten, without copying or re-encoding them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ops.training.batches import StepBatch

INDEX_FILE = "index.parquet"
PROMPT_EMBEDS_FILE = "prompt_embeds.safetensors"
FINGERPRINT_FILE = "fingerprint.json"
REPLAY_FILE = "replay.json"
EMPTY_PROMPT = ""


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


def read_shard_metadata(path: Path) -> dict[str, str]:
    """A shard's metadata, or ``{}`` when it is missing or unreadable (treated as invalid)."""
    try:
        with safe_open(str(path), "pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # a truncated or foreign file: the shard is rewritten
        return {}


@dataclass
class PromptEmbeddings:
    """Cached text-encoder outputs, one per distinct prompt; ``""`` is always id 0."""

    prompts: list[str]
    embeds: torch.Tensor  # [P, L, D]

    def __post_init__(self) -> None:
        if not self.prompts or self.prompts[0] != EMPTY_PROMPT:
            raise ValueError('the empty prompt "" must come first')
        self._ids = {p: i for i, p in enumerate(self.prompts)}

    @property
    def empty_id(self) -> int:
        return 0

    def ids(self, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([self._ids[p] for p in prompts], dtype=torch.long)

    def save(self, path: Path) -> None:
        save_file(
            {"embeds": self.embeds.float().contiguous()},
            str(path),
            {"prompts": json.dumps(self.prompts)},
        )

    @classmethod
    def load(cls, path: Path) -> PromptEmbeddings:
        with safe_open(str(path), "pt") as fh:
            prompts = json.loads(fh.metadata()["prompts"])
            embeds = fh.get_tensor("embeds")
        return cls(prompts, embeds)


@dataclass
class LatentBatch:
    latents: torch.Tensor  # [b, C, h, w] float32
    encoder_hidden_states: torch.Tensor  # [b, L, D] float32
    prompt_ids: torch.Tensor  # [b], after dropout


class LatentDataset:
    """Every latent of the train split in memory, with its prompt id and the embeddings.

    Memory: float16 latents, ~2.3 GB for 70k SD-sized (4x64x64) latents, held once per process.
    """

    def __init__(self, latents: torch.Tensor, index: pd.DataFrame, prompts: PromptEmbeddings):
        self.latents = latents
        self.index = index
        self.prompts = prompts
        self.prompt_ids = prompts.ids(index["prompt"].tolist())

    @classmethod
    def load(cls, directory: Path) -> LatentDataset:
        """The latents of ``directory``, followed by its replayed rows (``replay.json``)."""
        directory = Path(directory)
        own = cls._load_own(directory)
        replay_file = directory / REPLAY_FILE
        if not replay_file.is_file():
            return own
        spec = json.loads(replay_file.read_text())
        other = cls._load_own((directory / spec["directory"]).resolve())
        return own.extended(other, [str(i) for i in spec["image_ids"]])

    @classmethod
    def _load_own(cls, directory: Path) -> LatentDataset:
        index_file = directory / INDEX_FILE
        if not index_file.is_file():
            raise FileNotFoundError(f"{index_file} does not exist: run the latents stage first")
        index = pd.read_parquet(index_file).sort_values(["shard", "row"]).reset_index(drop=True)
        parts = [load_file(str(directory / name))["latents"] for name in index["shard"].unique()]
        latents = torch.cat(parts)
        if len(latents) != len(index):
            raise ValueError(f"{directory}: {len(latents)} latents but {len(index)} index rows")
        return cls(latents, index, PromptEmbeddings.load(directory / PROMPT_EMBEDS_FILE))

    def extended(self, other: LatentDataset, image_ids: list[str]) -> LatentDataset:
        """This dataset plus the rows of ``other`` with ``image_ids`` (in that order), their
        prompts' embeddings appended to this one's (both from the same frozen text encoder)."""
        position = {iid: i for i, iid in enumerate(other.index["image_id"].astype(str))}
        missing = [iid for iid in image_ids if iid not in position]
        if missing:
            raise ValueError(f"{len(missing)} replayed image ids are not in the base latents")
        if other.latent_shape != self.latent_shape:
            raise ValueError(
                f"replayed latents are {other.latent_shape}, these {self.latent_shape}: "
                "encode both with the same VAE"
            )
        rows = [position[iid] for iid in image_ids]
        extra = other.index.iloc[rows].reset_index(drop=True)
        new_prompts = [p for p in dict.fromkeys(extra["prompt"]) if p not in self.prompts._ids]
        embeds = torch.cat(
            [self.prompts.embeds, other.prompts.embeds[other.prompts.ids(new_prompts)]]
        )
        index = pd.concat([self.index, extra], ignore_index=True)
        latents = torch.cat([self.latents, other.latents[rows].to(self.latents.dtype)])
        prompts = PromptEmbeddings(self.prompts.prompts + new_prompts, embeds)
        return LatentDataset(latents, index, prompts)

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one latent."""
        return tuple(self.latents.shape[1:])  # type: ignore[return-value]

    @property
    def embed_dim(self) -> int:
        return int(self.prompts.embeds.shape[-1])

    def class_prompts(self) -> dict[str, str]:
        """One prompt per class name, sorted by class name (for per-class sample grids)."""
        pairs = self.index.drop_duplicates("class_name").sort_values("class_name")
        return dict(zip(pairs["class_name"], pairs["prompt"], strict=True))

    def batch(
        self, step: StepBatch, prompt_dropout: float = 0.0, device: torch.device | str = "cpu"
    ) -> LatentBatch:
        """This process's rows of a step, with ``prompt_dropout`` of prompts replaced by ``""``.

        Prompt dropout trains the unconditional model alongside the conditional one, which is
        what classifier-free guidance needs (Ho & Salimans 2022); SD used 10%.
        """
        ids = self.prompt_ids[step.indices]
        if prompt_dropout > 0:
            ids = torch.where(step.rand() < prompt_dropout, self.prompts.empty_id, ids)
        return LatentBatch(
            latents=self.latents[step.indices].to(device, torch.float32),
            encoder_hidden_states=self.prompts.embeds[ids].to(device, torch.float32),
            prompt_ids=ids,
        )
