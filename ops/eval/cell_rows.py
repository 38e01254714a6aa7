"""From one cell's per-class features to its table rows: point estimates, bootstrap intervals,
seed-to-seed spread, sample sizes, and the replicates that differences are computed from.

Shared by generated cells (``ops.eval.cells``) and the real-vs-real floor (``ops.eval.floor``),
so the floor is measured exactly like a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ops.eval.bootstrap import bootstrap, interval
from ops.eval.classwise import (
    ALL,
    BOOTSTRAPPED,
    SUMMARY_ROWS,
    ClassSample,
    fast_frechet,
    mixture_moments,
    moments,
    point_metrics,
    sample_size_warnings,
)
from ops.eval.saved_features import save_npz


def seed_spread(samples: list[ClassSample], seeds: dict[str, np.ndarray]) -> tuple[int, float]:
    """(number of generation seeds, std over seeds of the ``all`` FID of each seed's images).

    Each seed's FID uses only that seed's images (a third of them with 3 seeds), so the spread
    is that of a smaller cell: an upper bound on the full cell's, the safe side for the
    champion check's tolerance."""
    labels = sorted({int(s) for v in seeds.values() for s in np.unique(v)})
    if len(labels) < 2:
        return len(labels), float("nan")
    ref = mixture_moments([moments(s.ref) for s in samples])
    fids = []
    for r in labels:
        parts = [moments(s.gen[seeds[s.name] == r]) for s in samples]
        fids.append(fast_frechet(*mixture_moments(parts), *ref))
    return len(labels), float(np.std(fids, ddof=1))


def cell_rows(
    samples: list[ClassSample],
    cfg: dict[str, Any],
    seeds: dict[str, np.ndarray] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]]]:
    """Rows (classes in order, then ``all`` and ``mean``) and the bootstrap replicates."""
    points = point_metrics(samples, int(cfg.get("fidelity_k", 5)))
    reps = bootstrap(samples, int(cfg["bootstrap_replicates"]), int(cfg["bootstrap_seed"]))
    n_seeds, spread = seed_spread(samples, seeds) if seeds else (1, float("nan"))
    sizes = {s.name: (len(s.gen), len(s.ref)) for s in samples}
    total = (sum(n for n, _ in sizes.values()), sum(m for _, m in sizes.values()))
    dim = samples[0].gen.shape[1]
    rows = []
    for name, metrics in points.items():
        n, n_ref = total if name in SUMMARY_ROWS else sizes[name]
        row: dict[str, Any] = {"class_name": name, **metrics, "n": n, "n_ref": n_ref}
        for key in BOOTSTRAPPED:
            row[f"{key}_lo"], row[f"{key}_hi"] = interval(metrics[key], reps[name][key])
        row["feature_dim"] = dim
        row["seeds"] = n_seeds
        row["fid_seed_sd"] = spread if name == ALL else float("nan")
        per_class = [sizes[name]] if name not in SUMMARY_ROWS else list(sizes.values())
        row["warnings"] = "; ".join(
            sorted({w for g, r in per_class for w in sample_size_warnings(g, r, dim)})
        )
        rows.append(row)
    return rows, reps


def save_replicates(path: Path, reps: dict[str, dict[str, np.ndarray]]) -> Path:
    """``row`` (names) and one (rows, replicates) array per bootstrapped metric."""
    names = list(reps)
    arrays = {"row": np.asarray(names, dtype=str)}
    for key in BOOTSTRAPPED:
        arrays[key] = np.stack([reps[r][key] for r in names])
    return save_npz(path, **arrays)


def load_replicates(path: Path) -> dict[str, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        names = data["row"].astype(str)
        return {r: {k: data[k][i] for k in BOOTSTRAPPED} for i, r in enumerate(names)}
