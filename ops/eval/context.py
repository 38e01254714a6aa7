"""What a benchmark cell is computed from, and whether its stored result is still fresh.

:class:`BenchContext` holds what every cell shares (config, evaluated classes, the feature
extractor, the classifier, the reference statistics). A cell file
``reports/cells/<model>__<steps>.parquet`` carries a fingerprint of everything it was computed
from (model weights, extractor, reference images, the config keys in ``MEASURE_KEYS``), so a
cell re-runs exactly when one of them changed.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ops.config import stage_config
from ops.eval.extractor import load_extractor
from ops.eval.features import FeatureExtractor
from ops.eval.plan import (
    ModelSpec,
    model_spec,
    plan,
    unavailable_reason,
)
from ops.eval.reference import Reference, reference_stats
from ops.eval.shards import (
    ProcessGroup,
)
from ops.layout import DataLayout

POOLED = "all"


CELLS_DIR = "cells"


# Config keys that change what a cell measures (the rest: which cells, how reports look).
MEASURE_KEYS = (
    "images_per_class",
    "generation_batch_size",
    "guidance_scale",
    "teacher_timestep_spacing",
    "kid_subsets",
    "kid_subset_size",
    "grid_samples",
    "seed",
)


# --------------------------------------------------------------------------------------------
# configuration and the plan
# --------------------------------------------------------------------------------------------
def benchmark_config(params: dict[str, Any]) -> dict[str, Any]:
    """``benchmark`` merged with its preset section; the guidance scale (diffusers' w + 1) is
    ``sampling.guidance_scale``, the same for every model, so rows are comparable."""
    cfg = stage_config(params, "benchmark")
    cfg.setdefault(
        "guidance_scale", float((params.get("sampling") or {}).get("guidance_scale", 4.0))
    )
    cfg.setdefault("generation_batch_size", 32)
    cfg.setdefault("grid_samples", 4)
    cfg.setdefault("teacher_timestep_spacing", "trailing")
    return cfg


def evaluated_classes(params: dict[str, Any], manifest: pd.DataFrame) -> dict[str, str]:
    """The ``presets.*.benchmark.classes`` evaluated classes and their prompts, by name.

    Deterministic: among classes with non-holdout training rows (the models know them) and at
    least two test images (FID/KID need a reference), the ones with the most test images win,
    ties broken by name. The prompt is the class's most frequent training prompt.
    """
    want = int(benchmark_config(params)["classes"])
    df = manifest
    holdout = (
        df["holdout"].fillna(False).astype(bool)
        if "holdout" in df
        else pd.Series(False, index=df.index)
    )
    train = df[(df["split"] == "train") & ~holdout]
    tests = df[df["split"] == "test"]["class_name"].value_counts()
    eligible = [c for c in sorted(train["class_name"].unique()) if tests.get(c, 0) >= 2]
    if not eligible:
        raise ValueError("no class has both non-holdout training rows and >= 2 test images")
    chosen = sorted(eligible, key=lambda c: (-int(tests[c]), c))[:want]
    out: dict[str, str] = {}
    for name in sorted(chosen):
        counts = train[train["class_name"] == name]["prompt"].value_counts()
        out[name] = sorted(counts[counts == counts.max()].index)[0]
    return out


def cell_path(layout: DataLayout, model: str, steps: int) -> Path:
    return layout.reports / CELLS_DIR / f"{model}__{int(steps)}.parquet"


def grid_path(layout: DataLayout, model: str, steps: int) -> Path:
    return layout.reports / CELLS_DIR / f"{model}__{int(steps)}.png"


# --------------------------------------------------------------------------------------------
# what every cell shares: classes, extractor, references, classifier
# --------------------------------------------------------------------------------------------
@dataclass
class BenchContext:
    """Everything the cells of one benchmark run share, loaded once."""

    cfg: dict[str, Any]
    classes: dict[str, str]
    extractor: FeatureExtractor
    references: dict[str, Reference]
    classifier: Any = None  # ops.eval.classifier.DomainClassifier, for class fidelity
    classifier_names: list[str] = field(default_factory=list)
    device: str = "cpu"
    fingerprint: str = ""


def load_context(
    params: dict[str, Any], layout: DataLayout, group: ProcessGroup | None = None
) -> BenchContext:
    """Classes, feature extractor, cached reference stats and the domain classifier.

    Under a launch every rank loads the extractor and the classifier (it featurises its own
    shard) on its own device; only rank 0 computes the references, which it alone compares
    against (and caches: one writer per file), and the fingerprint it decides freshness by."""
    from ops.eval.classifier import MODEL_NAME, load_domain_classifier
    from ops.training.runtime import torch_threads

    group = group or ProcessGroup.current()
    cfg = benchmark_config(params)
    device = group.device
    if not layout.manifest.is_file():
        raise FileNotFoundError(f"{layout.manifest} does not exist: run medimgs_manifest first")
    manifest = pd.read_parquet(layout.manifest)
    classes = evaluated_classes(params, manifest)
    classifier, names = None, []
    if (layout.model(MODEL_NAME) / "config.json").is_file():
        classifier, names = load_domain_classifier(layout, device=device)
    elif cfg["feature_extractor"] == "domain":
        raise FileNotFoundError(
            f"no domain classifier at {layout.model(MODEL_NAME)}: run the domain_classifier "
            "stage first (benchmark.feature_extractor is 'domain')"
        )
    extractor = load_extractor(cfg["feature_extractor"], layout, params, device)
    context = BenchContext(
        cfg=cfg,
        classes=classes,
        extractor=extractor,
        references={},
        classifier=classifier,
        classifier_names=names,
        device=device,
    )
    if not group.is_main:
        return context
    with torch_threads(cfg.get("classifier_threads")):
        refs = reference_stats(layout, extractor, list(classes), manifest=manifest, device=device)
    payload = {
        "extractor": extractor.fingerprint,
        "references": {c: r.fingerprint for c, r in sorted(refs.items())},
        "classes": classes,
        "classifier": _weights(classifier) if classifier is not None else None,
        "config": {k: cfg.get(k) for k in MEASURE_KEYS},
    }
    context.references = refs
    context.fingerprint = _sha(payload)
    return context


def _weights(model: Any) -> str:
    from ops.eval.classifier import weights_fingerprint

    return weights_fingerprint(model)


def _sha(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_MODEL_HASHES: dict[tuple, str] = {}


def model_fingerprint(directory: Path) -> str:
    """Content hash of a model directory, memoised on (path, sizes, mtimes) so a run hashes
    each model once however many cells it has."""
    from ops.training.fingerprint import directory_hash

    files = sorted(p for p in Path(directory).rglob("*") if p.is_file())
    key = (str(directory), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _MODEL_HASHES:
        _MODEL_HASHES[key] = directory_hash(Path(directory))
    return _MODEL_HASHES[key]


def cell_fingerprint(context: BenchContext, spec: ModelSpec, layout: DataLayout, steps: int) -> str:
    model = model_fingerprint(layout.model(spec.directory))
    return _sha([context.fingerprint, model, spec.__dict__, int(steps)])


def read_cell(layout: DataLayout, model: str, steps: int) -> pd.DataFrame | None:
    path = cell_path(layout, model, steps)
    return pd.read_parquet(path) if path.is_file() else None


def cell_is_fresh(context: BenchContext, layout: DataLayout, model: str, steps: int) -> bool:
    """A measured (not skipped) cell file computed from exactly the current inputs."""
    spec = model_spec(model)
    if unavailable_reason(spec, layout, steps) is not None:
        return False
    rows = read_cell(layout, model, steps)
    if rows is None or rows.empty or (rows["status"] != "ok").any():
        return False
    return str(rows["fingerprint"].iloc[0]) == cell_fingerprint(context, spec, layout, steps)


# --------------------------------------------------------------------------------------------
# one cell
# --------------------------------------------------------------------------------------------
def image_seed(seed: int, class_name: str, batch: int) -> int:
    """The seed of one batch: the same for every model (same starting noise), independent of
    which other classes are evaluated."""
    return (int(seed) * 1_000_003 + zlib.crc32(class_name.encode()) * 1009 + int(batch)) % 2**62


def collect_cells(layout: DataLayout, params: dict[str, Any] | None = None) -> pd.DataFrame:
    """Every cell file's rows (of the configured grid when ``params`` is given), in table order."""
    if params is not None:
        frames = [read_cell(layout, m, s) for m, s in plan(params)]
    else:
        frames = [
            pd.read_parquet(p) for p in sorted((layout.reports / CELLS_DIR).glob("*.parquet"))
        ]
    frames = [f for f in frames if f is not None and not f.empty]
    if not frames:
        return pd.DataFrame(columns=["model", "steps", "class_name", "status", "fid"])
    return pd.concat(frames, ignore_index=True)
