"""The utility and privacy tables as a person reads them (markdown, pooled over classes)."""

from __future__ import annotations

import pandas as pd


def _interval(value: float, lo: float, hi: float) -> str:
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def utility_markdown(table: pd.DataFrame) -> str:
    """One line per (model, training): accuracy and macro AUC with 95% intervals, and each as a
    share of the real-trained classifier's."""
    pooled = table[table["class_name"] == "all"]
    lines = [
        "| model | trained on | n train | accuracy [95% CI] | macro AUC [95% CI] "
        "| accuracy / real | AUC / real |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in pooled.itertuples(index=False):
        lines.append(
            f"| {r.model} | {r.training} | {r.n_train} "
            f"| {_interval(r.accuracy, r.accuracy_lo, r.accuracy_hi)} "
            f"| {_interval(r.auc, r.auc_lo, r.auc_hi)} "
            f"| {r.ratio_accuracy:.2f} | {r.ratio_auc:.2f} |"
        )
    return "\n".join(lines)


def audit_markdown(table: pd.DataFrame, threshold: float, percentile: float) -> str:
    """One line per model: images audited, how many were flagged, the closest distance."""
    pooled = table[table["class_name"] == "all"] if not table.empty else table
    lines = [
        f"Flagged `memorised`: pixel distance below {threshold:.4f}, the {percentile:g} per "
        "cent quantile of held-out real test images' distances to the train split.",
        "",
        "| model | n | memorised | share | min distance | median distance |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in pooled.itertuples(index=False):
        lines.append(
            f"| {r.model} | {r.n} | {r.n_memorised} | {r.share_memorised:.1%} "
            f"| {r.min_distance:.4f} | {r.median_distance:.4f} |"
        )
    return "\n".join(lines)
