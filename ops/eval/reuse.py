"""Cells that would measure nothing new: a model whose directory holds the same files as an
already measured model, sampled the same way at the same steps and seeds (``lcm`` and ``llcm``,
whose trainings are bit-identical at h = 1/2), gets a copy of that cell instead of a second
generation. The copy says so in its ``reason`` column; its fingerprint is its own, so it
re-runs (is copied again) exactly when the original would.
"""

from __future__ import annotations

import shutil
from typing import Any

import pandas as pd

from ops.layout import DataLayout


def copy_cell(
    layout: DataLayout, source: tuple[str, int], target: tuple[str, int], fingerprint: str
) -> list[dict[str, Any]]:
    """Copy the cell file, its features, replicates and grid from ``source`` to ``target``."""
    from ops.eval.cells import _write_cell, replicates_path
    from ops.eval.context import grid_path, read_cell
    from ops.eval.saved_features import features_path

    rows = read_cell(layout, *source)
    if rows is None:
        raise FileNotFoundError(f"cell {source} to copy was not written")
    for path_of in (features_path, replicates_path, grid_path):
        src, dst = path_of(layout, *source), path_of(layout, *target)
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    model, steps = target
    grid = grid_path(layout, model, steps)
    out = rows.assign(
        model=model,
        steps=int(steps),
        fingerprint=fingerprint,
        reason=f"identical to {source[0]}@{source[1]} (same weights, sampler, steps, seeds)",
        sample_grid=str(grid.relative_to(layout.root)) if grid.is_file() else "",
        measured_at=pd.Timestamp.now(tz="UTC").isoformat(),
    )
    records = out.to_dict("records")
    _write_cell(layout, model, steps, records)
    return records
