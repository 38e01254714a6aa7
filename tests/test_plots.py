"""Benchmark pictures and Table 3: files are written, tables have models x steps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ops.eval.plots import (
    fid_vs_steps_plot,
    k_ablation_grid,
    step_comparison_grid,
    summarize_cells,
    table3_markdown,
)

MODELS = ["teacher_ddim", "lcm", "llcm"]
STEPS = [1, 2, 4, 8]


@pytest.fixture
def results() -> pd.DataFrame:
    """Per-class rows (2 classes) for three swept models plus a single-step reference."""
    rng = np.random.default_rng(0)
    rows = [
        {
            "model": m,
            "steps": s,
            "class_name": c,
            "fid": float(100 / s + 10 * i + rng.uniform(0, 1)),
            "kid": float(rng.uniform(0, 0.1)),
            "n": 8,
            "class_fidelity": float(rng.uniform(0.5, 1)),
        }
        for i, m in enumerate(MODELS)
        for s in STEPS
        for c in ("a", "b")
    ]
    rows += [
        {"model": "teacher_ddim50", "steps": 50, "class_name": c, "fid": 5.0, "kid": 0.01, "n": 8}
        for c in ("a", "b")
    ]
    return pd.DataFrame(rows)


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_summarize_cells_averages_classes(results):
    cells = summarize_cells(results)
    assert len(cells) == len(MODELS) * len(STEPS) + 1
    first = results[(results.model == "teacher_ddim") & (results.steps == 1)]
    row = cells.iloc[0]
    assert row.model == "teacher_ddim" and row.steps == 1 and row.n == 16
    assert row.fid == pytest.approx(first.fid.mean())


def test_fid_vs_steps_plot_writes_png(results, tmp_path):
    out = fid_vs_steps_plot(results, tmp_path / "plots" / "fid_vs_steps.png")
    assert out.is_file() and min(_png_size(out)) > 100


def test_table3_markdown_shape(results):
    text = table3_markdown(results)
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    assert len(tables) == 3  # FID, n/KID, class fidelity
    all_steps = STEPS + [50]
    for table in tables:
        assert len(table) == 2 + len(MODELS) + 1
        assert all(line.count("|") == len(all_steps) + 2 for line in table)
    header = [c.strip() for c in tables[0][0].strip("|").split("|")]
    assert header == ["Model"] + [str(s) for s in all_steps]
    assert [line.split("|")[1].strip() for line in tables[0][2:]] == MODELS + ["teacher_ddim50"]
    llcm_row = tables[0][2 + MODELS.index("teacher_ddim")]
    assert "**" in llcm_row  # the best FID at 1 step is bold
    assert "n=16" in tables[1][2] and "KID" in tables[1][2]
    assert "–" in tables[0][-1]  # teacher_ddim50 has no 1-step cell


def test_table3_without_optional_columns():
    df = pd.DataFrame({"model": ["x", "x"], "steps": [1, 2], "fid": [3.0, 2.0]})
    text = table3_markdown(df)
    assert "| x | 3.00 | **2.00** |" in text or "| x | **3.00** | **2.00** |" in text


def _images(n: int, size: int = 16):
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def test_step_comparison_grid(tmp_path):
    grid = {
        "lcm": {s: _images(s) for s in STEPS},
        "llcm": {s: torch.rand(3, 16, 16) * 2 - 1 for s in STEPS},
        "teacher": {s: [Image.fromarray(_images(s)), _images(s + 1)] for s in STEPS[:2]},
    }
    out = step_comparison_grid(grid, tmp_path / "grid.png", title="samples")
    width, height = _png_size(out)
    assert width > height  # 4 step columns, 3 model rows


def test_k_ablation_grid(tmp_path):
    grid = {k: {s: _images(k * s) for s in STEPS} for k in (10, 20, 50)}
    out = k_ablation_grid(grid, tmp_path / "k.png")
    assert out.is_file()
    with pytest.raises(ValueError):
        k_ablation_grid({}, tmp_path / "empty.png")
