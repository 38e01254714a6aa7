"""The synthetic images the utility and memorisation stages judge: each configured model at its
headline step count, the same number of images per class, cached in the data directory.

Why a cache on disk (``reports/synthetic/<model>__<steps>/<class>/<i>.png``): both stages look
at the same pictures, a person can open them, and ``llcm audit`` can be pointed at the folder.
A set is regenerated only when its model's weights, the prompt, the count or the seed change
(``set.json`` holds that fingerprint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ops.config import stage_config
from ops.eval.context import image_seed, model_fingerprint, training_prompts
from ops.eval.plan import model_spec, open_sampler, unavailable_reason
from ops.layout import DataLayout
from ops.training.checkpoint import atomic_directory
from ops.training.locks import exclusive_lock

STAGE = "privacy"
SYNTHETIC_DIR = "synthetic"
SET_FILE = "set.json"


@dataclass
class SyntheticSet:
    """``images[i]`` was generated for ``class_names[i]``; ``files[i]`` is where it is stored."""

    model: str
    steps: int
    images: np.ndarray  # (n, H, W, 3) uint8
    class_names: list[str]
    files: list[str]


def privacy_config(params: dict[str, Any]) -> dict[str, Any]:
    """``privacy`` merged with its preset section, plus the benchmark's guidance settings (the
    images are sampled exactly as the benchmark samples them)."""
    cfg = stage_config(params, STAGE)
    bench = stage_config(params, "benchmark")
    cfg.setdefault("guidance_scale", float(params["sampling"]["guidance_scale"]))
    cfg.setdefault("teacher_timestep_spacing", bench.get("teacher_timestep_spacing"))
    return cfg


def class_prompts(manifest: pd.DataFrame) -> dict[str, str]:
    """Every class with non-holdout training rows and test images, with its most frequent
    training prompt: the classes a downstream classifier is trained and tested on."""
    holdout = manifest["holdout"].fillna(False).astype(bool) if "holdout" in manifest else False
    train = manifest[(manifest["split"] == "train") & ~holdout]
    tested = set(manifest.loc[manifest["split"] == "test", "class_name"])
    return training_prompts(train, sorted(set(train["class_name"]) & tested))


def _set_dir(layout: DataLayout, model: str, steps: int) -> Path:
    return layout.reports / SYNTHETIC_DIR / f"{model}__{steps}"


def _fingerprint(model_dir: Path, prompts: dict[str, str], cfg: dict[str, Any], steps: int) -> str:
    keys = ("images_per_class", "seed", "guidance_scale", "teacher_timestep_spacing")
    payload = {"model": model_fingerprint(model_dir), "prompts": prompts, "steps": steps}
    payload |= {k: cfg.get(k) for k in keys}
    return json.dumps(payload, sort_keys=True, default=str)


def _load(directory: Path, model: str, steps: int) -> SyntheticSet:
    meta = json.loads((directory / SET_FILE).read_text())
    files = meta["files"]
    images = np.stack([np.asarray(Image.open(directory / f).convert("RGB")) for f in files])
    names = meta["class_names"]
    return SyntheticSet(model, steps, images, names, [str(directory / f) for f in files])


def synthetic_set(
    params: dict[str, Any], layout: DataLayout, model: str, steps: int, prompts: dict[str, str]
) -> SyntheticSet | None:
    """The cached set of ``model`` at ``steps``, generated first if missing or stale; ``None``
    when the model is not on disk (the stage then reports it as skipped)."""
    cfg = privacy_config(params)
    spec = model_spec(model)
    if unavailable_reason(spec, layout, steps) is not None:
        return None
    directory = _set_dir(layout, model, steps)
    fingerprint = _fingerprint(layout.model(spec.directory), prompts, cfg, steps)
    meta_file = directory / SET_FILE
    # utility and privacy_audit may ask for the same set at once: one generates, the other
    # waits and reads it; the set replaces an old one only when complete
    with exclusive_lock(directory.with_name(f".{directory.name}.lock")):
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        if meta.get("fingerprint") != fingerprint:
            with atomic_directory(directory) as scratch:
                _generate(spec, layout, cfg, prompts, steps, fingerprint, model, scratch)
        return _load(directory, model, steps)


def _generate(
    spec: Any,
    layout: DataLayout,
    cfg: dict[str, Any],
    prompts: dict[str, str],
    steps: int,
    fingerprint: str,
    model: str,
    directory: Path,
) -> None:
    """Sample ``images_per_class`` images a class into ``directory``, then its ``set.json``."""
    sampler = open_sampler(spec, layout, cfg)
    per_class = int(cfg["images_per_class"])
    files, names = [], []
    for name, class_prompt in sorted(prompts.items()):
        prompt, _ = sampler.prompt_for(name, class_prompt)
        seed = image_seed(int(cfg["seed"]), name, 0)
        images = sampler.images(prompt, per_class, steps, seed)
        (directory / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            rel = f"{name}/{i:04d}.png"
            Image.fromarray(image).save(directory / rel)
            files.append(rel)
            names.append(name)
    meta = {"fingerprint": fingerprint, "files": files, "class_names": names, "model": model}
    (directory / SET_FILE).write_text(json.dumps(meta, indent=1))


def synthetic_sets(params: dict[str, Any], layout: DataLayout) -> dict[str, SyntheticSet | None]:
    """Every model of ``privacy.models`` (name -> headline steps), by model name."""
    manifest = pd.read_parquet(layout.manifest)
    prompts = class_prompts(manifest)
    models = privacy_config(params)["models"]
    return {
        model: synthetic_set(params, layout, model, int(steps), prompts)
        for model, steps in models.items()
    }
