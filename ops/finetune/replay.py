"""Replay: a share of the base training set trained on alongside a custom dataset.

Why: fine-tuning on two new classes alone moves every weight toward them and the base classes
degrade (catastrophic forgetting). DreamBooth's answer is prior preservation (generated images
of the class); with the base training set at hand, replaying real base latents is the simpler
and stronger one (rehearsal, Robins 1995; experience replay in continual learning). The
replayed rows are chosen per base class, the same ones for the teacher and the student, and
referenced from the workspace's ``latents/replay.json`` (``ops.training.latent_data``), never
copied.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pandas as pd

from ops.layout import DataLayout
from ops.training.latent_data import INDEX_FILE, REPLAY_FILE


def replay_ids(base: DataLayout, per_class: int, seed: int) -> list[str]:
    """``per_class`` image ids of every base class, drawn without replacement with ``seed``."""
    index_file = base.latents / INDEX_FILE
    if not index_file.is_file():
        raise FileNotFoundError(f"{index_file} does not exist: run the base latents stage first")
    index = pd.read_parquet(index_file).sort_values("image_id")
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for _, rows in index.groupby("class_name", sort=True):
        ids = rows["image_id"].astype(str).to_numpy()
        take = min(per_class, len(ids))
        chosen += sorted(rng.choice(ids, size=take, replace=False).tolist())
    return chosen


def write_replay(workspace: DataLayout, base: DataLayout, image_ids: list[str]) -> str:
    """Point the workspace's latents at the replayed base rows (none: remove the pointer);
    returns a key of the replay, for the trainers' checkpoint fingerprints."""
    path = workspace.latents / REPLAY_FILE
    if not image_ids:
        path.unlink(missing_ok=True)
        return "none"
    spec = {"directory": os.path.relpath(base.latents, workspace.latents), "image_ids": image_ids}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1) + "\n")
    return hashlib.sha256("\n".join(image_ids).encode()).hexdigest()[:16]
