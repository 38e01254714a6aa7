"""Pictures and tables of the benchmark, in the shape of the paper's Table 3 and Figures 1 and 3.

Input of the plots and tables is a long table with one row per benchmark cell: columns
``model``, ``steps``, ``fid`` and optionally ``n`` (generated images), ``kid``,
``class_fidelity`` and ``class_name``. With per-class rows, a (model, steps) cell shows the
mean FID / KID / class fidelity over classes and the total n. Model order is the order of first
appearance (the order of ``benchmark.models``); steps are sorted.

Images for the grids: PIL images, uint8 arrays (H, W, 3), uint8 tensors (3, H, W) or float
tensors in [-1, 1] (what the VAE decodes); a cell may also hold a list of images, shown side by
side. Everything renders with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ops.eval.features import to_uint8_hwc  # noqa: E402

MEAN_COLUMNS = ("fid", "fid_lo", "fid_hi", "kid", "class_fidelity", "seconds_per_image")


def summarize_cells(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, steps): mean of FID/KID/class fidelity over classes, total n."""
    missing = {"model", "steps", "fid"} - set(df.columns)
    if missing:
        raise ValueError(f"benchmark table lacks columns {sorted(missing)}")
    agg: dict[str, str] = {c: "mean" for c in MEAN_COLUMNS if c in df.columns}
    if "n" in df.columns:
        agg["n"] = "sum"
    order = list(dict.fromkeys(df["model"]))
    out = df.groupby(["model", "steps"], sort=False).agg(agg).reset_index()
    out["steps"] = out["steps"].astype(int)
    out["_order"] = out["model"].map(order.index)
    return out.sort_values(["_order", "steps"]).drop(columns="_order").reset_index(drop=True)


def _errors(rows: pd.DataFrame) -> np.ndarray | None:
    """Asymmetric error bars from ``fid_lo``/``fid_hi`` (None without intervals)."""
    if not {"fid_lo", "fid_hi"} <= set(rows.columns) or rows["fid_lo"].isna().all():
        return None
    return np.vstack([rows["fid"] - rows["fid_lo"], rows["fid_hi"] - rows["fid"]]).clip(0)


def _floor_band(ax: Any, floor: pd.DataFrame | None) -> None:
    """The real-vs-real floor as a grey band (its interval) and line."""
    if floor is None or floor.empty:
        return
    f = floor.iloc[0]
    ax.axhline(f["fid"], color="grey", linewidth=1, label="real vs real (floor)")
    if np.isfinite(f.get("fid_lo", np.nan)) and np.isfinite(f.get("fid_hi", np.nan)):
        ax.axhspan(f["fid_lo"], f["fid_hi"], color="grey", alpha=0.2)


def fid_vs_ms_plot(
    df: pd.DataFrame, out_png: str | Path, floor: pd.DataFrame | None = None
) -> Path:
    """FID (95% interval) against measured milliseconds per image, one point per cell, points
    of a model joined in step order, log x axis: the quality-per-compute front a user picks an
    operating point from (lower left is better)."""
    cells = summarize_cells(df)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for model, rows in cells.groupby("model", sort=False):
        ms = rows["seconds_per_image"] * 1000
        ax.errorbar(ms, rows["fid"], yerr=_errors(rows), marker="o", capsize=2, label=str(model))
        for x, y, s in zip(ms, rows["fid"], rows["steps"], strict=True):
            ax.annotate(str(s), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    _floor_band(ax, floor)
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds per image (measured, this machine)")
    ax.set_ylabel("FID, all classes (lower is better)")
    ax.set_title("Quality per compute (labels: steps)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def fid_vs_steps_plot(
    df: pd.DataFrame,
    out_png: str | Path,
    title: str | None = None,
    floor: pd.DataFrame | None = None,
) -> Path:
    """FID against inference steps, one line per model (log2 x axis), with 95% intervals as
    error bars when the table has them and the real-vs-real floor as a grey band.

    A model measured at a single step count while others span several (e.g. ``teacher_ddim50``)
    is drawn as a dashed horizontal reference line.
    """
    cells = summarize_cells(df)
    counts = cells.groupby("model", sort=False)["steps"].nunique()
    sweep = counts.max() > 1
    swept = cells[cells["model"].map(counts) > 1] if sweep else cells
    all_steps = sorted(swept["steps"].unique())
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for model, rows in cells.groupby("model", sort=False):
        if sweep and len(rows) == 1:
            (line,) = ax.plot([], [])  # take the next colour of the cycle
            ax.axhline(
                rows["fid"].iloc[0],
                linestyle="--",
                color=line.get_color(),
                label=f"{model} ({rows['steps'].iloc[0]} steps)",
            )
        else:
            ax.errorbar(rows["steps"], rows["fid"], yerr=_errors(rows), marker="o", capsize=2,
                        label=str(model))  # fmt: skip
    _floor_band(ax, floor)
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_steps)
    ax.set_xticklabels([str(s) for s in all_steps])
    ax.set_xlabel("inference steps")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(title or "FID vs inference steps")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def _to_image(item: Any) -> np.ndarray:
    """One image or a list of images (side by side) as uint8 (H, W, 3)."""
    if isinstance(item, Sequence) and not isinstance(item, np.ndarray | str):
        images = [_to_image(x) for x in item]
        gap = np.full((images[0].shape[0], 2, 3), 255, dtype=np.uint8)
        parts: list[np.ndarray] = []
        for img in images:
            parts += [img, gap]
        return np.concatenate(parts[:-1], axis=1)
    if hasattr(item, "convert"):  # PIL image
        return np.asarray(item.convert("RGB"))
    arr = item[None] if getattr(item, "ndim", 0) == 3 else item
    return to_uint8_hwc(arr)[0]


def _image_grid(
    rows: Mapping[Any, Mapping[int, Any]],
    out_png: str | Path,
    row_label: str,
    title: str | None,
    cell_inches: float = 1.6,
) -> Path:
    """Rows x steps grid of images with row labels and "N steps" column titles."""
    if not rows:
        raise ValueError("no images to plot")
    steps = sorted({int(s) for cells in rows.values() for s in cells})
    images = {(r, int(s)): _to_image(x) for r, cells in rows.items() for s, x in cells.items()}
    aspect = max(img.shape[1] / img.shape[0] for img in images.values())
    fig, axes = plt.subplots(
        len(rows),
        len(steps),
        figsize=(cell_inches * aspect * len(steps) + 0.8, cell_inches * len(rows) + 0.6),
        squeeze=False,
    )
    for i, r in enumerate(rows):
        for j, s in enumerate(steps):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            img = images.get((r, s))
            if img is not None:
                ax.imshow(img, interpolation="nearest")
            if i == 0:
                ax.set_title(f"{s} step" + ("" if s == 1 else "s"), fontsize=9)
            if j == 0:
                ax.set_ylabel(row_label.format(r), fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, out_png)


def step_comparison_grid(
    images_by_model_steps: Mapping[str, Mapping[int, Any]],
    out_png: str | Path,
    title: str | None = None,
) -> Path:
    """Samples of each model (rows) at each step count (columns), like the paper's Fig. 1."""
    return _image_grid(images_by_model_steps, out_png, "{}", title)


def k_ablation_grid(
    images_by_k_steps: Mapping[int, Mapping[int, Any]],
    out_png: str | Path,
    title: str | None = None,
) -> Path:
    """Samples of students distilled with different skips k (rows) at each step count
    (columns), like the paper's Fig. 3."""
    return _image_grid(images_by_k_steps, out_png, "k = {}", title)


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def _markdown_table(
    header: list[str], rows: list[list[str]], align_right_from: int = 1
) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append(
        "|" + "|".join("---" if i < align_right_from else "---:" for i in range(len(header))) + "|"
    )
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def table3_markdown(df: pd.DataFrame) -> str:
    """Table 3 as markdown: FID per model (rows) x inference steps (columns), the best FID of
    each column in bold; then a table of n and KID per cell, and class fidelity if measured."""
    cells = summarize_cells(df)
    models = list(dict.fromkeys(cells["model"]))
    steps = sorted(cells["steps"].unique())
    lookup = {(r.model, r.steps): r for r in cells.itertuples(index=False)}
    header = ["Model"] + [str(s) for s in steps]

    best = cells.groupby("steps")["fid"].min().to_dict()
    fid_rows = []
    for m in models:
        row = [str(m)]
        for s in steps:
            cell = lookup.get((m, s))
            text = _fmt(cell.fid if cell else None, ".2f")
            if cell and math.isfinite(cell.fid) and cell.fid == best[s]:
                text = f"**{text}**"
            row.append(text)
        fid_rows.append(row)

    def detail(cell: Any) -> str:
        if cell is None:
            return "–"
        parts = []
        if "n" in cells.columns:
            parts.append(f"n={int(cell.n)}")
        if "kid" in cells.columns:
            parts.append(f"KID {_fmt(cell.kid, '.4f')}")
        return ", ".join(parts) or "–"

    out = ["**FID** by inference steps (lower is better)", ""]
    out += _markdown_table(header, fid_rows)
    out += ["", "**n and KID** per cell", ""]
    out += _markdown_table(
        header, [[str(m)] + [detail(lookup.get((m, s))) for s in steps] for m in models]
    )
    if "class_fidelity" in cells.columns:
        rows = [
            [str(m)]
            + [
                _fmt(lookup[(m, s)].class_fidelity if (m, s) in lookup else None, ".1%")
                for s in steps
            ]
            for m in models
        ]
        out += ["", "**Class fidelity** (share classified as the prompted class)", ""]
        out += _markdown_table(header, rows)
    return "\n".join(out) + "\n"


def _save(fig: plt.Figure, out_png: str | Path) -> Path:
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
