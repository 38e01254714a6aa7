"""The floor of the benchmark (model ``real``, steps 0): held-out real images measured against
the reference exactly like a model's images.

Why: FID, KID and the manifold metrics of two finite samples of the *same* distribution are not
0 (FID's plug-in estimate is biased upwards by O(d/n)); the floor row shows what "as good as
real" reads as at this n and d. A model whose interval overlaps the floor's cannot be told
apart from real images by this benchmark. Its class fidelity is the classifier's accuracy on
held-out real images: the most a model can reach.

Also writes ``reports/features/reference.npz`` (the reference features every cell is compared
against) and ``reports/features/real__0.npz``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from ops.eval.cell_rows import cell_rows, save_replicates
from ops.eval.classwise import ClassSample
from ops.eval.context import REAL, SUMMARY, BenchContext, cell_path, read_cell
from ops.eval.saved_features import features_path, reference_features_path, save_features
from ops.layout import DataLayout

FLOOR_STEPS = 0


def _hits(context: BenchContext, name: str, feats: np.ndarray) -> np.ndarray | None:
    if context.classifier is None or context.extractor.name != "domain":
        return None
    if name not in context.classifier_names:
        return None
    from ops.eval.classifier import predict_from_features

    return predict_from_features(context.classifier, feats) == context.classifier_names.index(name)


def floor_is_fresh(context: BenchContext, layout: DataLayout) -> bool:
    rows = read_cell(layout, REAL, FLOOR_STEPS)
    return (
        rows is not None
        and not rows.empty
        and str(rows["fingerprint"].iloc[0]) == context.fingerprint
        and features_path(layout, REAL, FLOOR_STEPS).is_file()
        and reference_features_path(layout).is_file()
    )


def measure_floor(context: BenchContext, layout: DataLayout) -> list[dict[str, Any]]:
    """Rows of the ``real`` cell (written to ``reports/cells/real__0.parquet``)."""
    from ops.eval.cells import replicates_path

    names = [
        c for c in context.classes if c in context.floors and len(context.floors[c].feats) >= 2
    ]
    samples = [
        ClassSample(c, context.floors[c].feats, context.references[c].feats,
                    _hits(context, c, context.floors[c].feats))
        for c in names
    ]  # fmt: skip
    save_features(
        reference_features_path(layout), {c: context.references[c].feats for c in context.classes}
    )
    save_features(
        features_path(layout, REAL, FLOOR_STEPS),
        {s.name: s.gen for s in samples},
        hits={s.name: s.hits for s in samples},
    )
    rows, reps = cell_rows(samples, context.cfg)
    save_replicates(replicates_path(layout, REAL, FLOOR_STEPS), reps)
    for row in rows:
        row.update(
            model=REAL, steps=FLOOR_STEPS, status="ok", reason="", nfe=0, prompt="",
            seconds_per_image=float("nan"), extractor=context.extractor.name,
            fingerprint=context.fingerprint, sample_row=-1,
            measured_at=pd.Timestamp.now(tz="UTC").isoformat(),
        )  # fmt: skip
        if row["class_name"] in SUMMARY:
            row["seeds"] = 1
    path = cell_path(layout, REAL, FLOOR_STEPS)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return rows
