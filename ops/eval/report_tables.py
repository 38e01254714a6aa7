"""The markdown of ``reports/benchmark.md``: every number with its 95% interval and n, the
differences against the baseline marked ``n.s.`` where their interval contains 0, and the
real-vs-real floor first, so a reader sees what "indistinguishable" reads as."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ops.eval.context import MEAN, POOLED, REAL, SUMMARY


def num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fmt(value: Any, spec: str = ".2f") -> str:
    v = num(value)
    return "–" if v is None else format(v, spec)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def with_interval(row: Any, metric: str, spec: str = ".2f") -> str:
    if row is None or num(getattr(row, metric, None)) is None:
        return "–"
    lo, hi = getattr(row, f"{metric}_lo", None), getattr(row, f"{metric}_hi", None)
    return f"{fmt(getattr(row, metric), spec)} [{fmt(lo, spec)}, {fmt(hi, spec)}]"


def fid_with_interval(row: Any) -> str:
    return with_interval(row, "fid")


def difference(row: Any, metric: str = "fid", spec: str = ".2f") -> str:
    if row is None or num(getattr(row, f"{metric}_diff", None)) is None:
        return "–"
    text = (
        f"{num(getattr(row, f'{metric}_diff')):+{spec}} "
        f"[{fmt(getattr(row, f'{metric}_diff_lo'), spec)}, "
        f"{fmt(getattr(row, f'{metric}_diff_hi'), spec)}]"
    )
    return text if bool(getattr(row, f"{metric}_diff_significant", False)) else f"{text} n.s."


def _grid(rows: pd.DataFrame, cell) -> list[str]:
    steps = sorted(int(s) for s in rows["steps"].unique())
    lookup = {(r.model, int(r.steps)): r for r in rows.itertuples(index=False)}
    body = [
        [str(m)] + [cell(lookup.get((m, s))) for s in steps] for m in dict.fromkeys(rows["model"])
    ]
    return table(["Model", *[str(s) for s in steps]], body)


def _per_class(per_class: pd.DataFrame, classes: list[str], column: str) -> list[str]:
    """One row per (model, steps), one column per class."""
    body = []
    for (model, steps), cell in per_class.groupby(["model", "steps"], sort=False):
        values = dict(zip(cell["class_name"], cell[column], strict=True))
        body.append([str(model), str(steps)] + [fmt(values.get(c)) for c in classes])
    return table(["Model", "Steps", *classes], body)


def markdown_report(df: pd.DataFrame) -> str:
    """Floor, FID (all / mean over classes) with intervals, differences, KID, fidelity,
    precision/recall/density/coverage, per-class FID, timing, skipped cells, warnings."""
    ok = df[df["status"] == "ok"] if "status" in df else df.iloc[0:0]
    rows = ok[ok["model"] != REAL]
    pooled, mean = rows[rows["class_name"] == POOLED], rows[rows["class_name"] == MEAN]
    floor = ok[(ok["model"] == REAL) & (ok["class_name"] == POOLED)]
    per_class = rows[~rows["class_name"].isin(SUMMARY)]
    classes = list(dict.fromkeys(per_class["class_name"]))
    out = ["# Benchmark: FID, KID and class fidelity by model, steps and class", ""]
    if pooled.empty:
        out += ["No cell has been measured yet (every model skipped or missing).", ""]
    else:
        first = pooled.iloc[0]
        baseline = next((b for b in pooled.get("baseline", []) if b), "")
        out += [
            f"{len(classes)} evaluated classes; n generated / n_ref real images per class: "
            f"{int(per_class['n'].min())}-{int(per_class['n'].max())} / "
            f"{int(per_class['n_ref'].min())}-{int(per_class['n_ref'].max())}. Features: "
            f"`{first['extractor']}` ({int(first['feature_dim'])}-d). Guidance scale "
            f"{fmt(first['guidance_scale'], '.1f')} for every model. Brackets: 95% "
            "class-stratified bootstrap intervals; differences are paired bootstraps against "
            f"`{baseline or 'the baseline'}` at the same steps, `n.s.` where the interval "
            "contains 0.",
            "",
        ]
        if not floor.empty:
            f = floor.iloc[0]
            out += [
                f"**Floor** (model `real`: held-out real images against the reference): FID "
                f"{with_interval(f, 'fid')}, KID {with_interval(f, 'kid', '.4f')}, class "
                f"fidelity {fmt(f['class_fidelity'], '.1%')}. Below it no model can be told "
                "apart from real images.",
                "",
            ]
        out += ["## FID, all classes (equal weight per class on both sides)", ""]
        out += _grid(pooled, fid_with_interval)
        out += ["", "## FID, mean over classes", ""] + _grid(mean, fid_with_interval)
        out += ["", f"## FID difference against `{baseline}` (all classes)", ""]
        out += _grid(pooled, difference)
        out += ["", "## KID (unbiased, per class, averaged)", ""]
        out += _grid(pooled, lambda r: with_interval(r, "kid", ".4f"))
        out += ["", "## Class fidelity (share classified as the prompted class)", ""]
        out += _grid(pooled, lambda r: with_interval(r, "class_fidelity", ".2f"))
        out += ["", "## Precision / recall / density / coverage (mean over classes)", ""]
        out += _grid(
            mean,
            lambda r: (
                "–"
                if r is None
                else "/".join(
                    fmt(getattr(r, k)) for k in ("precision", "recall", "density", "coverage")
                )
            ),
        )
        if "finding_agreement" in mean:
            out += [
                "",
                "## Finding agreement (the finding read from the pixels, mean over classes)",
                "",
            ]
            out += _grid(mean, lambda r: "–" if r is None else fmt(r.finding_agreement))
        out += ["", "## Per-class FID", ""] + _per_class(per_class, classes, "fid")
        out += ["", "## Per-class class fidelity", ""]
        out += _per_class(per_class, classes, "class_fidelity")
        if "finding_agreement" in per_class:
            out += ["", "## Per-class finding agreement", ""]
            out += _per_class(per_class, classes, "finding_agreement")
        out += ["", "## Generation time (ms per image; UNet evaluations per image; seeds)", ""]
        out += _grid(
            pooled,
            lambda r: (
                "–"
                if r is None
                else f"{fmt(1000 * r.seconds_per_image, '.1f')} ({int(r.nfe)}; {int(r.seeds)})"
            ),
        )
    skipped = df[df["status"] == "skipped"] if "status" in df else df.iloc[0:0]
    if not skipped.empty:
        out += ["", "## Skipped cells", ""]
        for reason, group in skipped.groupby("reason", sort=False):
            cells = ", ".join(
                f"{m}@{s}" for m, s in zip(group["model"], group["steps"], strict=True)
            )
            out.append(f"- {cells}: {reason}")
    copied = ok[ok["class_name"] == POOLED]
    copied = copied[copied.get("reason", pd.Series("", index=copied.index)).astype(str) != ""]
    if not copied.empty:
        out += ["", "## Copied cells (nothing new to measure)", ""]
        out += [f"- {r.model}@{r.steps}: {r.reason}" for r in copied.itertuples(index=False)]
    warnings = [
        w for text in ok.get("warnings", pd.Series(dtype=str)) for w in str(text).split("; ") if w
    ]
    if warnings:
        out += ["", "## Warnings", ""]
        for text, count in pd.Series(warnings).value_counts().items():
            out.append(f"- {text} ({count} rows)")
    return "\n".join(out) + "\n"
