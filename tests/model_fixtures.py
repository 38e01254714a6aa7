"""A synthetic MedImgs manifest for the model stages' tests (independent of ingestion).

Each class is a bright shape of its own (disc, square, ring, bar) with jittered position and
size on a dark, noisy background, so a model that learns the classes shows it at a glance.
The last class is a held-out family (``holdout=True``), which base training must skip.
The manifest follows the ingestion contract column for column.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from metric_fixtures import save_image, write_manifest
from PIL import Image, ImageDraw

from ops.config import stage_config
from ops.data.prompts import build_prompt
from ops.layout import DataLayout

# class name -> (labels, shape, holdout)
CLASSES: dict[str, tuple[dict[str, str], str, bool]] = {
    "chest_xray_normal": (
        {"species": "human", "body_part": "chest", "modality": "X-ray", "disease": "normal"},
        "disc",
        False,
    ),
    "brain_mri_glioma": (
        {"species": "human", "body_part": "brain", "modality": "MRI", "disease": "glioma"},
        "square",
        False,
    ),
    "kidney_ct_stone": (
        {"species": "human", "body_part": "kidney", "modality": "CT", "disease": "kidney stone"},
        "ring",
        False,
    ),
    "cattle_skin_lumpy": (
        {
            "species": "cattle",
            "body_part": "skin",
            "modality": "photograph",
            "disease": "lumpy skin disease",
        },
        "bar",
        False,
    ),
    "dog_thorax_normal": (
        {"species": "dog", "body_part": "thorax", "modality": "X-ray", "disease": "normal"},
        "disc",
        True,
    ),
}
COLORS = {
    "disc": (230, 230, 230),
    "square": (240, 80, 60),
    "ring": (60, 200, 90),
    "bar": (80, 120, 250),
}


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One synthetic image of ``shape`` at ``size`` x ``size`` pixels."""
    noise = rng.normal(25, 8, (size, size, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(noise)
    draw = ImageDraw.Draw(img)
    c = size / 2 + rng.uniform(-0.1, 0.1, 2) * size
    r = size * rng.uniform(0.22, 0.3)
    box = [c[0] - r, c[1] - r, c[0] + r, c[1] + r]
    color = COLORS[shape]
    if shape == "disc":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "ring":
        draw.ellipse(box, outline=color, width=max(2, size // 12))
    else:
        draw.rectangle([box[0], c[1] - r / 3, box[2], c[1] + r / 3], fill=color)
    return img


def write_fixture_manifest(
    layout: DataLayout,
    resolution: int = 32,
    train_per_class: int = 6,
    test_per_class: int = 2,
    seed: int = 0,
) -> pd.DataFrame:
    """Write JPEGs and ``medimgs/manifest.parquet`` as ingestion would; return the manifest."""
    rng = np.random.default_rng(seed)
    rows = []
    for class_name, (labels, shape, holdout) in CLASSES.items():
        for i in range(train_per_class + test_per_class):
            split = "train" if i < train_per_class else "test"
            img = draw_shape(shape, resolution, rng)
            image_id, rel = save_image(layout, split, class_name, img)
            rows.append(
                {
                    "image_id": image_id,
                    "path": rel,
                    "split": split,
                    **labels,
                    "class_name": class_name,
                    "prompt": build_prompt(labels),
                    "width": resolution,
                    "height": resolution,
                    "source": "fixture",
                    "source_file": f"{class_name}/{i}.png",
                    "source_format": "png",
                    "holdout": holdout,
                }
            )
    return write_manifest(layout, rows)


def fixture_for_params(layout: DataLayout, params: dict, **kwargs) -> pd.DataFrame:
    """The fixture manifest at the preset's ingest resolution."""
    resolution = int(stage_config(params, "ingest")["resolution"])
    return write_fixture_manifest(layout, resolution=resolution, **kwargs)


def copy_data(source: DataLayout, target: DataLayout) -> DataLayout:
    """A private copy of a prepared data directory (tests that write must not share one)."""
    shutil.copytree(source.root, target.root, dirs_exist_ok=True)
    return target


# Micro settings for the model-stage tests: a few steps, checkpoints within the run, 3 shards.
TEST_OVERRIDES = [
    "autoencoder.log_every=2",
    "latents.shard_size=8",
    "teacher.log_every=1",
    "teacher.checkpoint_every=3",
    "teacher.sample_steps=2",
    "teacher.samples_per_class=2",
    "presets.micro.teacher.steps=6",
]


def micro_test_params(*extra: str) -> dict:
    from ops.config import DEFAULT_PARAMS, load_params

    return load_params(DEFAULT_PARAMS, preset="micro", overrides=[*TEST_OVERRIDES, *extra])


_PREPARED: list[DataLayout] = []


def prepared_data(tmp_path_factory) -> DataLayout:
    """A data dir with the fixture manifest and autoencoder, latents and teacher run (micro),
    built once per session; copy it (``copy_data``) before writing into it."""
    if not _PREPARED:
        import torch

        from ops.models.autoencoder import build_autoencoder
        from ops.models.latents import build_latents
        from ops.models.teacher import build_teacher

        layout = DataLayout(tmp_path_factory.mktemp("prepared") / "data")
        params = micro_test_params()
        fixture_for_params(layout, params)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # micro models gain nothing from threads on shared cores
        try:
            for name, stage in [
                ("autoencoder", build_autoencoder),
                ("latents", build_latents),
                ("teacher", build_teacher),
            ]:
                summary = stage(params, layout)
                (layout.root / f"{name}-summary.json").write_text(json.dumps(summary, default=str))
        finally:
            torch.set_num_threads(threads)
        _PREPARED.append(layout)
    return _PREPARED[0]


def stage_summary(layout: DataLayout, name: str) -> dict:
    return json.loads((layout.root / f"{name}-summary.json").read_text())


def kill_after_first_checkpoint(
    stage: str, params: dict, data: DataLayout, tmp_path: Path, checkpoints: Path | None = None
) -> dict:
    """Run trainer ``stage`` as ``python -m ops.entry`` in a child process, SIGKILL it
    once its first checkpoint is complete, and return that checkpoint's ``state.json``."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from ops.config import REPO_ROOT

    params_file = tmp_path / f"{stage}-params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "ops.entry", stage, "--params", str(params_file),
           "--data", str(data.root)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    checkpoints = checkpoints or data.checkpoint_dir(stage)
    try:
        deadline = time.monotonic() + 240
        while not list(checkpoints.glob("step-*/state.json")):
            assert proc.poll() is None, "the trainer exited before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 4 minutes"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [last] = list(checkpoints.glob("step-*"))  # older checkpoints are pruned
    return json.loads((last / "state.json").read_text())
