"""A micro world for the benchmark tests, built once per session: shape classes with a manifest,
a trained domain classifier, the micro teacher and its (untrained) consistency student.

Everything is sized so a benchmark cell takes well under a second on one CPU thread: 2
evaluated classes, 4 images per class, 16 px images, KID over 10 subsets.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from ops.config import load_params
from ops.layout import DataLayout

REPO = Path(__file__).resolve().parent.parent
BENCH_OVERRIDES = {
    "models": ["teacher_ddim", "teacher_dpmpp", "teacher_ddim50", "dreambooth", "llcm", "lcm"],
    "steps": [1, 2],
    "generation_batch_size": 4,
    "model_steps": {},
    "ablation_steps": None,
    "headline": {"models": ["llcm"], "steps": [2], "seeds": 2},  # 2 seeds x 2 images
    "grid_samples": 2,
    "champion_models": ["llcm"],
    "champion_steps": [1, 2],
}

_WORLD: dict = {}


def bench_params() -> dict:
    """The micro preset with the small benchmark grid above (a fresh dict every call)."""
    params = load_params(REPO / "params.yaml", preset="micro")
    params["benchmark"].update(BENCH_OVERRIDES)
    params["distill"]["k_ablation"] = []  # study students: their own tests
    params["distill"]["variants"] = {}
    params["presets"]["micro"]["benchmark"].update(images_per_class=4, classes=2)
    return params


def write_params(params: dict, path: Path) -> Path:
    """params as a YAML file, for the Dagster ``ParamsResource`` and ``--params``."""
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def bench_world(tmp_path_factory) -> dict:
    """{"root", "layout", "params", "manifest"}; models under ``layout.models``."""
    if _WORLD:
        return _WORLD
    from metric_fixtures import make_shape_dataset
    from micro_sd import build_micro_lcm

    from ops.eval.classifier_training import build_domain_classifier
    from ops.training.runtime import torch_threads

    root = tmp_path_factory.mktemp("bench_world")
    layout = DataLayout.from_env(root / "data")
    manifest = make_shape_dataset(layout, n_train=12, n_test=6, n_holdout=1, size=16)
    params = bench_params()
    with torch_threads(1):
        build_domain_classifier(params, layout, device="cpu")
        build_micro_lcm(layout.models)  # models/teacher + models/llcm (k = 20)
    _WORLD.update(root=root, layout=layout, params=params, manifest=manifest)
    return _WORLD


def linked_layout(world: dict, root: Path) -> DataLayout:
    """A fresh data directory sharing the world's images and models (symlinks), with its own
    reports: lets a test watch exactly which cell files it writes."""
    layout = DataLayout.from_env(root / "data")
    layout.root.mkdir(parents=True, exist_ok=True)
    for name in ("medimgs", "models"):
        os.symlink(world["layout"].root / name, layout.root / name)
    return layout
