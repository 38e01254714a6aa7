"""Every row's difference against a baseline model at the same step count, with a paired
bootstrap interval, and whether it is significant.

The baseline is ``benchmark.baseline`` (default ``teacher_dpmpp``: the teacher with
DPM-Solver++ at the same number of steps, the strongest few-step teacher sampler). Replicate b
of a cell and of its baseline resample the same image positions of the same classes
(``ops.eval.bootstrap``), so the replicate-wise difference is a paired bootstrap of the
difference; its interval comes from the same rule as every other interval. A difference whose
interval contains 0 is marked not significant (``<metric>_diff_significant`` False); the
report shows it as ``n.s.``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ops.eval.bootstrap import interval, significant
from ops.eval.cell_rows import load_replicates
from ops.eval.classwise import BOOTSTRAPPED


def add_differences(df: pd.DataFrame, baseline: str, replicates_of) -> pd.DataFrame:
    """``df`` with ``baseline`` and, per metric, ``<m>_diff``, ``<m>_diff_lo``, ``<m>_diff_hi``,
    ``<m>_diff_significant``. ``replicates_of(model, steps)`` is the cell's replicates file."""
    out = df.copy()
    out["baseline"] = ""
    for key in BOOTSTRAPPED:
        for suffix in ("_diff", "_diff_lo", "_diff_hi"):
            out[key + suffix] = np.nan
        out[key + "_diff_significant"] = False
    if out.empty:
        return out
    ok = out["status"] == "ok"
    cache: dict[tuple[str, int], dict | None] = {}

    def reps(model: str, steps: int) -> dict | None:
        if (model, steps) not in cache:
            path = Path(replicates_of(model, steps))
            cache[(model, steps)] = load_replicates(path) if path.is_file() else None
        return cache[(model, steps)]

    base_rows = out[ok & (out["model"] == baseline)].set_index(["steps", "class_name"])
    for i in out.index[ok & (out["model"] != baseline)]:
        row = out.loc[i]
        key = (int(row["steps"]), row["class_name"])
        mine, theirs = reps(row["model"], key[0]), reps(baseline, key[0])
        if key not in base_rows.index or mine is None or theirs is None:
            continue
        if row["class_name"] not in mine or row["class_name"] not in theirs:
            continue
        out.at[i, "baseline"] = baseline
        for metric in BOOTSTRAPPED:
            point = float(row[metric]) - float(base_rows.loc[key, metric])
            diff = mine[row["class_name"]][metric] - theirs[row["class_name"]][metric]
            lo, hi = interval(point, diff)
            out.at[i, metric + "_diff"] = point
            out.at[i, metric + "_diff_lo"] = lo
            out.at[i, metric + "_diff_hi"] = hi
            out.at[i, metric + "_diff_significant"] = significant(lo, hi)
    return out
