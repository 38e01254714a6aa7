"""Nearest-neighbour search of query images against the train split, batched.

Every space the audit uses stores unit vectors, so the Euclidean distance is
``sqrt(2 - 2 * cos)`` and the nearest neighbour is the one with the largest inner product: one
matrix product per (query batch, bank chunk), a running maximum, no n x m matrix kept. Queries
may bring several variants each (shifted and mirrored crops, ``normalise.query_variants``);
the best variant counts. At paper scale (tens of thousands of train images) pass
``device="cuda"``; on CPU the tiny preset needs seconds (docs/privacy.md has the cost).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

Array = np.ndarray


@dataclass(frozen=True)
class Neighbours:
    """For each query: the index of its nearest bank row and the distance to it."""

    index: Array  # (n,) int64
    distance: Array  # (n,) float64

    def __len__(self) -> int:
        return len(self.index)


def unit_features(features: Array) -> Array:
    """Feature vectors scaled to unit norm (a zero vector stays zero): cosine geometry, so a
    feature extractor's overall scale does not matter."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {features.shape}")
    norm = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norm, out=np.zeros_like(features), where=norm > 1e-12)


def nearest(
    queries: Array | Callable[[slice], Array],
    n_queries: int,
    bank: Array,
    batch_size: int = 64,
    chunk_size: int = 16384,
    device: str | None = None,
) -> Neighbours:
    """Nearest bank row of each query, over all its variants.

    ``queries`` is an (n, v, d) or (n, d) array of unit vectors, or a function giving the rows
    of a slice (so variants, which are many, are built one batch at a time). ``bank`` is (m, d)
    of unit vectors.
    """
    if len(bank) == 0:
        raise ValueError("the train bank is empty: nothing to compare against")
    dev = torch.device(device or "cpu")
    chunks = [
        torch.from_numpy(np.ascontiguousarray(bank[i : i + chunk_size], np.float32)).to(dev)
        for i in range(0, len(bank), chunk_size)
    ]
    index = np.zeros(n_queries, np.int64)
    similarity = np.full(n_queries, -np.inf)
    for start in range(0, n_queries, batch_size):
        rows = slice(start, min(start + batch_size, n_queries))
        batch = queries(rows) if callable(queries) else queries[rows]
        q = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(dev)
        if q.ndim == 2:
            q = q[:, None, :]
        best, best_index = _best_in_chunks(q, chunks, chunk_size)
        similarity[rows], index[rows] = best, best_index
    distance = np.sqrt(np.clip(2.0 - 2.0 * similarity, 0.0, None))
    return Neighbours(index=index, distance=distance)


@torch.no_grad()
def _best_in_chunks(
    q: torch.Tensor, chunks: list[torch.Tensor], chunk_size: int
) -> tuple[Array, Array]:
    """Largest inner product of each query (over its variants) with any bank row."""
    n, v, d = q.shape
    flat = q.reshape(n * v, d)
    best = torch.full((n,), -torch.inf, device=q.device)
    best_index = torch.zeros(n, dtype=torch.int64, device=q.device)
    for k, chunk in enumerate(chunks):
        sims = (flat @ chunk.T).reshape(n, v * len(chunk))
        value, arg = sims.max(dim=1)
        better = value > best
        best = torch.where(better, value, best)
        best_index = torch.where(better, arg % len(chunk) + k * chunk_size, best_index)
    return best.double().cpu().numpy(), best_index.cpu().numpy()
