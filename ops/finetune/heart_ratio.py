"""The clinical measurement of the dog experiment: the heart-to-thorax width ratio that a
radiologist reads off a lateral thorax film (the vertebral heart score's simpler cousin), read
from generated normal and cardiomegaly images by ``ops.eval.findings`` (no learned weights) and
compared with the same reading of the real test images; and the paper's Fig. 4 picture.

A model that draws the disease it is asked for gives cardiomegaly images whose ratios sit where
the real cardiomegaly ratios sit, above the normal ones. Reported per (model, steps, class):
the mean and standard deviation of the ratio, the share the reader calls enlarged, and the
Wasserstein-1 distance between the generated and the real ratio distributions. An image in
which the reader finds no lungs either side of a heart has no ratio (``readable`` is the share
that has one) and is not read as enlarged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ops.eval.context import image_seed
from ops.eval.findings import dog_cardiomegaly
from ops.layout import DataLayout
from ops.training.image_data import load_image

REAL = "real"


def ratios(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ratio, read as enlarged) of each uint8 (H, W, 3) image."""
    found = [dog_cardiomegaly(img) for img in images]
    return np.array([f.value for f in found]), np.array([f.diseased for f in found])


def real_images(layout: DataLayout, rows: pd.DataFrame) -> np.ndarray:
    return np.stack([load_image(layout, p).permute(1, 2, 0).numpy() for p in rows["path"]])


def ratio_row(model: str, steps: int, class_name: str, values: np.ndarray, enlarged: np.ndarray,
              real: np.ndarray, diseased: bool) -> dict[str, Any]:  # fmt: skip
    from scipy.stats import wasserstein_distance

    readable = values[np.isfinite(values)]
    real = real[np.isfinite(real)]
    nan = float("nan")
    return {
        "model": model,
        "steps": int(steps),
        "class_name": class_name,
        "n": len(values),
        "readable": float(len(readable) / max(1, len(values))),
        "ratio_mean": float(readable.mean()) if len(readable) else nan,
        "ratio_sd": float(readable.std(ddof=1)) if len(readable) > 1 else nan,
        "read_enlarged": float(enlarged.mean()),
        "agreement": float((enlarged == diseased).mean()),
        "w1_to_real": (
            float(wasserstein_distance(readable, real)) if len(readable) and len(real) else nan
        ),
    }


def measure_ratios(
    layout: DataLayout,
    cells: Sequence[tuple[str, int]],
    classes: dict[str, str],
    diseased: dict[str, bool],
    cfg: dict[str, Any],
    n: int,
    figure_samples: int,
) -> tuple[pd.DataFrame, dict[str, list[np.ndarray]]]:
    """The ratio table (real test images first, then each cell) and, per row of the Fig. 4
    picture, its first ``figure_samples`` images of every class."""
    from ops.eval.plan import model_spec, open_sampler
    from ops.training.image_data import read_manifest

    test = read_manifest(layout)
    test = test[test["split"] == "test"].sort_values("image_id")
    rows, figure, real = [], {}, {}
    for name in classes:
        imgs = real_images(layout, test[test["class_name"] == name])
        values, enlarged = ratios(imgs)
        real[name] = values
        rows.append(ratio_row(REAL, 0, name, values, enlarged, values, diseased[name]))
        figure.setdefault(REAL, []).extend(imgs[:figure_samples])
    for model, steps in cells:
        sampler = open_sampler(model_spec(model), layout, cfg)
        label = f"{model} {steps}"
        for name, class_prompt in classes.items():
            prompt, _ = sampler.prompt_for(name, class_prompt)
            imgs = sampler.images(prompt, n, steps, image_seed(int(cfg["seed"]), name, 0))
            values, enlarged = ratios(imgs)
            rows.append(ratio_row(model, steps, name, values, enlarged, real[name], diseased[name]))
            figure.setdefault(label, []).extend(imgs[:figure_samples])
    return pd.DataFrame(rows), figure


def figure4(figure: dict[str, list[np.ndarray]], cols: int, path: Path) -> Path:
    """One row per model (real images first), ``cols`` tiles: normal, then cardiomegaly."""
    from PIL import Image

    from ops.training.grids import save_grid

    images = [Image.fromarray(img) for row in figure.values() for img in row]
    return save_grid(path, images, cols, list(figure))
