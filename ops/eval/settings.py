"""The benchmark's configuration: ``benchmark`` + ``presets.<preset>.benchmark``, with an
optional named profile overlaid (``benchmark.profile``, set by ``llcm benchmark --profile``).

Why profiles: the default grid is sized to run inside ``make run`` (<= 8 min on 2 cores); the
larger protocol (every model at every step count, more seeds per headline cell) is the same code
with other grid keys, kept in ``benchmark.profiles.<name>`` so both live in params.yaml and a
profile cannot drift from the default's metric settings (only grid keys may differ).
"""

from __future__ import annotations

import copy
from typing import Any

from ops.config import ConfigError, stage_config

# Keys a profile may set: which cells run and how many images/seeds, never how a metric works.
PROFILE_KEYS = frozenset(
    {"models", "steps", "model_steps", "ablation_steps", "headline", "images_per_class"}
)
DEFAULTS: dict[str, Any] = {
    "generation_batch_size": 32,
    "grid_samples": 4,
    "teacher_timestep_spacing": "trailing",
    "model_steps": {},
    "ablation_steps": None,
    "headline": {"models": [], "steps": [], "seeds": 1},
    "baseline": "teacher_dpmpp",
    "bootstrap_replicates": 200,
    "bootstrap_seed": 0,
    "reference_images_per_class": 64,
    "fidelity_k": 5,
    "classes": None,
    "champion_seeds": 3,
    "champion_tolerance_sd": 3.0,
    "draw": "evaluation",
}
DRAWS = ("evaluation", "validation")
# A validation run generates from other seeds too, so neither its real nor its generated images
# are the evaluation's.
VALIDATION_SEED_SHIFT = 1_000_003


def benchmark_config(params: dict[str, Any]) -> dict[str, Any]:
    """The merged benchmark section; the guidance scale (diffusers' w + 1) is
    ``sampling.guidance_scale``, the same for every model, so rows are comparable."""
    cfg = stage_config(params, "benchmark")
    cfg.setdefault(
        "guidance_scale", float((params.get("sampling") or {}).get("guidance_scale", 4.0))
    )
    for key, value in DEFAULTS.items():
        cfg.setdefault(key, copy.deepcopy(value))
    profile = cfg.get("profile")
    if profile:
        profiles = cfg.get("profiles") or {}
        if profile not in profiles:
            raise ConfigError(f"unknown benchmark profile {profile!r}; known: {sorted(profiles)}")
        overlay = profiles[profile] or {}
        extra = sorted(set(overlay) - PROFILE_KEYS)
        if extra:
            raise ConfigError(f"benchmark profile {profile!r} sets non-grid keys {extra}")
        cfg.update(copy.deepcopy(overlay))
    if cfg["draw"] not in DRAWS:
        raise ConfigError(f"benchmark.draw must be one of {DRAWS}, got {cfg['draw']!r}")
    if cfg["draw"] == "validation":
        cfg["seed"] = int(cfg["seed"]) + VALIDATION_SEED_SHIFT
    return cfg


def headline_seeds(cfg: dict[str, Any], model: str, steps: int) -> int:
    """Generation seeds of a cell: ``headline.seeds`` for headline cells (``headline.models``
    may be ``all``), else 1."""
    head = cfg.get("headline") or {}
    models = head.get("models") or []
    in_models = models == "all" or model in models
    if in_models and int(steps) in [int(s) for s in head.get("steps") or []]:
        return max(1, int(head.get("seeds", 1)))
    return 1


def images_per_seed(cfg: dict[str, Any], seeds: int) -> int:
    """Images per class and seed: ``headline.images_per_seed`` when set, else
    ``images_per_class`` split over the seeds (rounded up), so a 3-seed cell costs what a
    1-seed cell costs and still holds >= ``images_per_class`` images per class."""
    per_class = int(cfg["images_per_class"])
    if seeds <= 1:
        return per_class
    fixed = (cfg.get("headline") or {}).get("images_per_seed")
    return int(fixed) if fixed else -(-per_class // seeds)
