"""Per-class sample grids from any diffusers text-to-image pipeline, and the class table saved
beside a pipeline."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ops.training.grids import save_grid


@torch.no_grad()
def sample_class_grid(
    pipe,
    class_prompts: Mapping[str, str],
    path: Path,
    *,
    per_class: int = 4,
    steps: int = 25,
    guidance_scale: float = 3.0,
    seed: int = 0,
) -> Path:
    """One row per class (labelled with its class name), ``per_class`` samples each.

    Each class draws from its own generator seeded ``seed + row``, so grids are repeatable and
    a class's row does not change when other classes are added. Classes are sampled one at a
    time, which bounds memory at SD scale.
    """
    device = pipe.device
    images = []
    for row, prompt in enumerate(class_prompts.values()):
        generator = torch.Generator(device=device).manual_seed(seed + row)
        out = pipe(
            prompt=[prompt] * per_class,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="pil",
        )
        images.extend(out.images)
    return save_grid(path, images, cols=per_class, row_labels=list(class_prompts))


CLASSES_FILE = "classes.json"


def write_class_table(model_dir: Path, class_prompts: dict[str, str]) -> Path:
    """``classes.json`` beside a saved pipeline: class name -> the prompt it was trained with,
    so ``llcm generate --class NAME`` needs no prompt (the table travels with the registry)."""
    path = Path(model_dir) / CLASSES_FILE
    path.write_text(json.dumps(dict(sorted(class_prompts.items())), indent=2) + "\n")
    return path


def read_class_table(model_dir: Path) -> dict[str, str]:
    """The class table of a saved pipeline (``{}`` for a model saved without one)."""
    path = Path(model_dir) / CLASSES_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
