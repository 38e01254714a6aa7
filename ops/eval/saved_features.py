"""Saved features: every cell's generated features and the reference features, so any number
of the table can be re-checked without generating an image.

Files (``reports/features/``), plain ``.npz`` (numpy arrays only, ``allow_pickle=False``):

* ``<model>__<steps>.npz``: ``features`` (n x d float32), ``class_name`` (n), ``seed`` (n,
  the generation seed index) and ``hit`` (n, 1 = the classifier saw the prompted class, -1 =
  no classifier); ``real__0.npz`` is the floor's held-out real sample;
* ``reference.npz``: ``features`` and ``class_name`` of the real reference images.

Recompute a cell's FID (any class, ``all`` or ``mean``)::

    python -m ops.eval.saved_features data/reports/features/llcm__1.npz --class all

It prints the FID, KID and n of the rows from the two files with the benchmark's own
definitions (``ops.eval.classwise``), which equal the table's columns.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from ops.eval.classwise import ALL, MEAN, ClassSample, point_metrics
from ops.layout import DataLayout

FOLDER = "features"
REFERENCE_FILE = "reference.npz"


def features_path(layout: DataLayout, model: str, steps: int) -> Path:
    return layout.reports / FOLDER / f"{model}__{int(steps)}.npz"


def reference_features_path(layout: DataLayout) -> Path:
    return layout.reports / FOLDER / REFERENCE_FILE


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    """Write atomically (aside, then rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)
    return path


def save_features(
    path: Path,
    features: dict[str, np.ndarray],
    seeds: dict[str, np.ndarray] | None = None,
    hits: dict[str, np.ndarray | None] | None = None,
) -> Path:
    """Per-class features (in class order) as one ``features`` / ``class_name`` table."""
    names = list(features)
    arrays: dict[str, np.ndarray] = {
        "features": np.concatenate([np.asarray(features[c], dtype=np.float32) for c in names]),
        "class_name": np.concatenate([np.full(len(features[c]), c) for c in names]).astype(str),
    }
    if seeds is not None:
        arrays["seed"] = np.concatenate([np.asarray(seeds[c], dtype=np.int64) for c in names])
    if hits is not None:
        arrays["hit"] = np.concatenate(
            [
                np.full(len(features[c]), -1, np.int8)
                if hits.get(c) is None
                else np.asarray(hits[c], dtype=np.int8)
                for c in names
            ]
        )
    return save_npz(path, **arrays)


def load_by_class(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
    """({class: features}, {class: hits or None}) from a saved file, classes in file order."""
    with np.load(path, allow_pickle=False) as data:
        feats, names = data["features"], data["class_name"].astype(str)
        hit = data.get("hit")
    order = list(dict.fromkeys(names))
    by_class = {c: feats[names == c] for c in order}
    hits = {c: (None if hit is None or (hit[names == c] < 0).any() else hit[names == c] > 0)
            for c in order}  # fmt: skip
    return by_class, hits


def recompute(cell_file: Path, reference_file: Path, k: int = 5) -> dict[str, dict[str, float]]:
    """Every row's point metrics from a saved cell and the saved reference."""
    gen, hits = load_by_class(cell_file)
    ref, _ = load_by_class(reference_file)
    samples = [ClassSample(c, gen[c], ref[c], hits[c]) for c in gen]
    return point_metrics(samples, k)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="recompute a benchmark cell from saved features")
    parser.add_argument("cell", type=Path, help="reports/features/<model>__<steps>.npz")
    parser.add_argument(
        "--reference", type=Path, default=None, help="default: reference.npz beside it"
    )
    parser.add_argument("--class", dest="class_name", default=ALL, help=f"a class, {ALL} or {MEAN}")
    args = parser.parse_args(argv)
    rows = recompute(args.cell, args.reference or args.cell.parent / REFERENCE_FILE)
    if args.class_name not in rows:
        parser.error(f"no row {args.class_name!r}; rows: {', '.join(rows)}")
    row = rows[args.class_name]
    print(json.dumps({"class_name": args.class_name, **{k: round(v, 6) for k, v in row.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
