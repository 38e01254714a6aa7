"""Per-class sample grids from any diffusers text-to-image pipeline."""

from __future__ import annotations

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
