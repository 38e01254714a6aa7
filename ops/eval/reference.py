"""Reference statistics of the real images of each class, cached in the data directory.

A class's reference is computed once per (extractor, reference images) fingerprint and saved
under ``reports/``, so every benchmark cell compares against the same real features.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ops.eval.distances import FeatureStats
from ops.eval.features import FeatureExtractor, extract_features, load_images
from ops.layout import DataLayout


# --------------------------------------------------------------------------------------------
# reference statistics of the real test split, cached in the data directory
# --------------------------------------------------------------------------------------------
@dataclass
class Reference:
    """Real-image statistics of one class: moments for FID, the features themselves for KID."""

    class_name: str
    stats: FeatureStats
    feats: np.ndarray
    fingerprint: str


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "class"


def reference_path(
    layout: DataLayout, extractor_name: str, class_name: str, set_name: str = "test"
) -> Path:
    """The cache file of one class's features: ``fid_refs/<extractor>/<class>.npz`` for the
    test split, ``fid_refs/<extractor>/<set>/<class>.npz`` for another image set."""
    folder = layout.reports / "fid_refs" / extractor_name
    folder = folder if set_name == "test" else folder / set_name
    return folder / f"{_slug(class_name)}.npz"


def resolve_image_path(layout: DataLayout, rel: str) -> Path:
    """Manifest paths are relative to the data directory."""
    path = Path(rel)
    if path.is_absolute():
        return path
    primary = layout.root / path
    return primary if primary.exists() else layout.medimgs / path


def reference_fingerprint(rows: Any, extractor: FeatureExtractor) -> str:
    """Hash of what decides the reference stats: the class's images (content-hash ids and
    paths) and the extractor (weights, input size, resize)."""
    items = sorted(zip(rows["image_id"].astype(str), rows["path"].astype(str), strict=True))
    payload = {
        "extractor": extractor.fingerprint,
        "input_size": extractor.input_size,
        "resize": "clean:PIL-bicubic-float",
        "images": items,
    }
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def reference_stats(
    layout: DataLayout,
    extractor: FeatureExtractor,
    classes: Sequence[str] | None = None,
    *,
    split: str = "test",
    batch_size: int = 64,
    manifest: Any = None,
    device: torch.device | str = "cpu",
    rows_by_class: dict[str, Any] | None = None,
    set_name: str = "test",
) -> dict[str, Reference]:
    """Per-class statistics of the real ``split`` images, cached at
    ``reports/fid_refs/<extractor>/<class>.npz`` (mu, sigma, n, sums, features, fingerprint)
    and recomputed when the fingerprint no longer matches. Pooled stats over classes are
    ``FeatureStats.merge_all`` of these. ``rows_by_class`` (image_id, path per class, e.g. the
    evaluation draw of ``ops.eval.reference_sets``) replaces the manifest's ``split`` rows;
    ``set_name`` then names its cache folder."""
    import pandas as pd

    if rows_by_class is None:
        df = manifest if manifest is not None else pd.read_parquet(layout.manifest)
        df = df[df["split"] == split]
        names = list(classes) if classes is not None else sorted(df["class_name"].unique())
        rows_by_class = {name: df[df["class_name"] == name] for name in names}
    out: dict[str, Reference] = {}
    for name in list(classes) if classes is not None else list(rows_by_class):
        rows = rows_by_class[name].sort_values("image_id")
        if rows.empty:
            raise ValueError(f"class {name!r} has no {set_name!r} images")
        fingerprint = reference_fingerprint(rows, extractor)
        path = reference_path(layout, extractor.name, name, set_name)
        if path.is_file():
            with np.load(path, allow_pickle=False) as cached:
                if str(cached["fingerprint"]) == fingerprint and str(cached["class_name"]) == name:
                    out[name] = Reference(
                        name, FeatureStats.from_arrays(cached), cached["feats"], fingerprint
                    )
                    continue
        stats = FeatureStats(extractor.dim)
        feats = []
        paths = [resolve_image_path(layout, p) for p in rows["path"]]
        for start in range(0, len(paths), batch_size):
            batch = extract_features(
                load_images(paths[start : start + batch_size]), extractor, batch_size, device
            )
            stats.update(batch)
            feats.append(batch)
        all_feats = np.concatenate(feats)
        arrays: dict[str, np.ndarray] = {
            "mu": stats.mean,
            "sigma": stats.covariance if stats.n > 1 else np.zeros((stats.dim, stats.dim)),
            **stats.to_arrays(),
            "feats": all_feats,
            "fingerprint": np.asarray(fingerprint),
            "class_name": np.asarray(name),
            "extractor": np.asarray(extractor.name),
        }
        _save_npz(path, **arrays)
        out[name] = Reference(name, stats, all_feats, fingerprint)
    return out
