"""The two columns of the benchmark table a user of synthetic data looks at first: accuracy of
a classifier trained on the model's images alone and tested on real ones (``tos_accuracy``),
and the share of its images the memorisation audit flags (``memorised_share``).

They come from the ``utility`` and ``privacy_audit`` stages (``make experiments``), which
judge each model at its headline steps, so only those rows get them; until the stages have run
the columns are NaN. Read from the data layout's files, so the benchmark never imports the
stages that sit above it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ops.eval.context import POOLED
from ops.layout import DataLayout

COLUMNS = ("tos_accuracy", "tos_accuracy_lo", "tos_accuracy_hi", "memorised_share")


def _synthetic_steps(layout: DataLayout) -> dict[str, int]:
    """Model -> the steps its synthetic set was generated with (``reports/synthetic/``)."""
    out = {}
    for directory in sorted((layout.reports / "synthetic").glob("*__*")):
        model, _, steps = directory.name.rpartition("__")
        if steps.isdigit():
            out[model] = int(steps)
    return out


def add_usability(df: pd.DataFrame, layout: DataLayout) -> pd.DataFrame:
    """``df`` with the usability columns on each judged model's ``all`` row at its steps."""
    df = df.copy()
    for column in COLUMNS:
        df[column] = np.nan
    if df.empty:
        return df
    steps = _synthetic_steps(layout)
    values: dict[str, dict[str, float]] = {}
    if layout.utility_table.is_file():
        table = pd.read_parquet(layout.utility_table)
        rows = table[(table["class_name"] == POOLED) & (table["training"] == "synthetic")]
        for r in rows.itertuples(index=False):
            values.setdefault(r.model, {}).update(
                tos_accuracy=r.accuracy,
                tos_accuracy_lo=r.accuracy_lo,
                tos_accuracy_hi=r.accuracy_hi,
            )
    if layout.privacy_table.is_file():
        table = pd.read_parquet(layout.privacy_table)
        for r in table[table["class_name"] == POOLED].itertuples(index=False):
            values.setdefault(r.model, {})["memorised_share"] = r.share_memorised
    for model, found in values.items():
        mask = (df["model"] == model) & (df["class_name"] == POOLED)
        if model in steps:
            mask &= df["steps"] == steps[model]
        for column, value in found.items():
            df.loc[mask, column] = value
    return df


def usability_markdown(df: pd.DataFrame) -> list[str]:
    """A table of the rows that have the columns (none: nothing)."""
    if "tos_accuracy" not in df:
        return []
    rows = df[(df["class_name"] == POOLED) & df[list(COLUMNS)].notna().any(axis=1)]
    if rows.empty:
        return []
    out = [
        "",
        "## Usable and shareable? (make experiments: utility and the memorisation audit)",
        "",
        "| Model | Steps | train-on-synthetic accuracy [95% CI] | memorised share |",
        "|---|---:|---:|---:|",
    ]
    for r in rows.itertuples(index=False):
        acc = (
            f"{r.tos_accuracy:.3f} [{r.tos_accuracy_lo:.3f}, {r.tos_accuracy_hi:.3f}]"
            if pd.notna(r.tos_accuracy)
            else "–"
        )
        share = f"{r.memorised_share:.1%}" if pd.notna(r.memorised_share) else "–"
        out.append(f"| {r.model} | {int(r.steps)} | {acc} | {share} |")
    return out
