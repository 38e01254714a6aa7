"""The two stages that decide whether a user can use and share the synthetic images:
``utility`` (train on synthetic, test on real) and ``privacy_audit`` (does any generated image
copy a training image). Both judge the same cached synthetic sets (``synthetic``), write their
tables under ``reports/`` and log one MLflow run each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ops.layout import DataLayout
from ops.privacy.audit import audit_images, summarise, summary_table
from ops.privacy.bank import FeatureFn, calibrate, split_rows, train_bank
from ops.privacy.normalise import PixelSpec
from ops.privacy.pairs import save_closest_pairs
from ops.privacy.synthetic import SyntheticSet, class_prompts, privacy_config, synthetic_sets
from ops.privacy.utility import Labelled, Recipe, equal_per_class, utility_table

AUDIT_SUMMARY = "privacy_audit.json"
PAIRS_DIR = "privacy_pairs"


def domain_features(layout: DataLayout) -> FeatureFn | None:
    """The domain classifier's features as the audit's feature space (None before it exists):
    the nearest training image by content, reported beside the pixel-space verdict."""
    from ops.eval.classifier import (
        CONFIG_FILE,
        MODEL_NAME,
        feature_extractor,
        load_domain_classifier,
    )
    from ops.eval.features import extract_features

    if not (layout.model(MODEL_NAME) / CONFIG_FILE).is_file():
        return None
    model, _ = load_domain_classifier(layout, device="cpu")
    extractor = feature_extractor(model)
    return lambda images: extract_features(
        np.stack([np.asarray(image.convert("RGB")) for image in images]), extractor
    )


def build_privacy_audit(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Audit every configured model's synthetic set against the MedImgs train split, in pixel
    space (which decides ``memorised``) and in the domain classifier's feature space."""
    cfg = privacy_config(params)
    features = domain_features(layout)
    bank = train_bank(layout, PixelSpec.from_config(cfg), features)
    calibration = calibrate(layout, bank, float(cfg.get("percentile", 1.0)), features)
    records_by_model: dict[str, list[dict[str, Any]]] = {}
    summaries: dict[str, Any] = {}
    pairs: dict[str, str] = {}
    skipped: list[str] = []
    for model, synthetic in synthetic_sets(params, layout).items():
        if synthetic is None:
            skipped.append(model)
            continue
        pictures = [Image.fromarray(image) for image in synthetic.images]
        records = audit_images(
            pictures, synthetic.files, bank, calibration, synthetic.class_names, features
        )
        records_by_model[model] = records
        summaries[model] = summarise(records, calibration)
        path = layout.reports / PAIRS_DIR / f"{model}.png"
        pairs[model] = str(save_closest_pairs(records, _lookup(synthetic, pictures), layout, path))
    table = summary_table(records_by_model) if records_by_model else pd.DataFrame()
    layout.reports.mkdir(parents=True, exist_ok=True)
    table.to_parquet(layout.privacy_table, index=False)
    summary = {
        "threshold": calibration.pixel.value,
        "percentile": calibration.pixel.percentile,
        "n_reference": int(calibration.pixel.reference.size),
        "n_train": len(bank.paths),
        "feature_space": "domain_classifier" if features else None,
        "models": summaries,
        "skipped": skipped,
        "pairs": pairs,
        "table": str(layout.privacy_table),
    }
    (layout.reports / AUDIT_SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    summary["mlflow_run_id"] = _log_run(params, layout, "privacy_audit", _audit_metrics(table))
    return summary


def _lookup(synthetic: SyntheticSet, pictures: list[Image.Image]):
    """record -> its generated picture, for the closest-pairs sheet."""
    by_file = dict(zip(synthetic.files, pictures, strict=True))
    return lambda record: by_file[record["file"]]


def _labelled(images: np.ndarray, names: list[str], index: dict[str, int]) -> Labelled:
    return Labelled(images, np.array([index[n] for n in names], dtype=np.int64))


def _real_split(layout: DataLayout, split: str, index: dict[str, int]) -> Labelled:
    rows = split_rows(layout, split)
    rows = rows[rows["class_name"].isin(index)]
    images = np.stack(
        [np.asarray(Image.open(layout.root / p).convert("RGB")) for p in rows["path"]]
    )
    return _labelled(images, list(rows["class_name"]), index)


def build_utility(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Train one fixed classifier recipe on real, synthetic and real+synthetic images (the same
    count per class everywhere) and test each on the real test split."""
    cfg = privacy_config(params)
    classes = sorted(class_prompts(pd.read_parquet(layout.manifest)))
    index = {name: i for i, name in enumerate(classes)}
    real_test = _real_split(layout, "test", index)
    real_train = _real_split(layout, "train", index)
    sets: dict[str, SyntheticSet | None] = synthetic_sets(params, layout)
    available = {m: s for m, s in sets.items() if s is not None}
    per_class = min(
        [int(np.bincount(real_train.labels, minlength=len(classes)).min())]
        + [int(cfg["images_per_class"])]
    )
    seed = int(cfg["seed"])
    synthetic = {
        model: equal_per_class(_labelled(s.images, s.class_names, index), per_class, seed)
        for model, s in available.items()
    }
    recipe = Recipe(**cfg.get("utility_recipe", {}))
    table = utility_table(
        equal_per_class(real_train, per_class, seed),
        real_test,
        synthetic,
        classes,
        recipe,
        n_boot=int(cfg.get("bootstrap", 1000)),
        seed=seed,
    )
    layout.reports.mkdir(parents=True, exist_ok=True)
    table.to_parquet(layout.utility_table, index=False)
    pooled = table[table["class_name"] == "all"]
    return {
        "per_class_train_images": per_class,
        "n_test": len(real_test),
        "skipped": sorted(set(sets) - set(available)),
        "pooled": pooled.to_dict(orient="records"),
        "table": str(layout.utility_table),
        "mlflow_run_id": _log_run(params, layout, "utility", _utility_metrics(pooled)),
    }


def _audit_metrics(table: pd.DataFrame) -> dict[str, float]:
    if table.empty:
        return {}
    pooled = table[table["class_name"] == "all"]
    return {f"memorised_share/{r.model}": float(r.share_memorised) for r in pooled.itertuples()}


def _utility_metrics(pooled: pd.DataFrame) -> dict[str, float]:
    out = {}
    for row in pooled.itertuples():
        training = row.training.replace("+", "_plus_")  # MLflow names allow no "+"
        key = row.model if row.training == "real" else f"{row.model}/{training}"
        out[f"accuracy/{key}"] = float(row.accuracy)
        out[f"auc/{key}"] = float(row.auc)
    return out


def _log_run(params: dict[str, Any], layout: DataLayout, name: str, metrics: dict) -> str:
    """One MLflow run per stage: its config, pooled metrics and the report files."""
    import mlflow

    from ops.tracking.mlflow_setup import flatten, setup_mlflow

    experiment = setup_mlflow(layout, params)
    with mlflow.start_run(experiment_id=experiment, run_name=name) as run:
        mlflow.set_tag("stage", name)
        flat = flatten(privacy_config(params), "privacy.")
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        for path in (layout.privacy_table, layout.utility_table):
            if Path(path).is_file():
                mlflow.log_artifact(str(path), "reports")
        for path in sorted((layout.reports / PAIRS_DIR).glob("*.png")):
            mlflow.log_artifact(str(path), PAIRS_DIR)
        return run.info.run_id
