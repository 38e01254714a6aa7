"""The memorisation audit: for each image, its nearest training image and whether it is too
close (``threshold``), then summaries per class and per model.

``audit_images`` serves the pipeline (generated pictures in memory, with the class they were
prompted for); ``audit_folder`` serves ``llcm audit DIR`` (any folder, from any tool: files
that do not decode are listed as skipped with the reason, never fatal). Pixel space decides
``memorised``; feature space, when a feature extractor is given, is reported beside it
(``memorised_feature``): a classifier's features put every image of a class close together, so
they say "same content" more than "same picture".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ops.privacy.bank import Calibration, Encoded, FeatureFn, TrainBank, encode, search

Record = dict[str, Any]


def audit_encoded(
    enc: Encoded,
    files: Sequence[str],
    bank: TrainBank,
    calibration: Calibration,
    classes: Sequence[str | None] | None = None,
    device: str | None = None,
) -> list[Record]:
    """One record per encoded image (same order as ``files``)."""
    if len(files) != len(enc.canon) or (classes is not None and len(classes) != len(files)):
        raise ValueError("images, files and classes must have one entry per image")
    pixel, feature = search(enc, bank, device)
    quantile = calibration.pixel.reference_quantile(pixel.distance)
    flags = calibration.pixel.flags(pixel.distance)
    records = []
    for i, file in enumerate(files):
        j = int(pixel.index[i])
        record: Record = {
            "file": str(file),
            "class_name": classes[i] if classes is not None else None,
            "nearest_train_image": bank.paths[j],
            "nearest_train_class": bank.class_names[j],
            "distance": round(float(pixel.distance[i]), 6),
            "reference_quantile": round(float(quantile[i]), 6),
            "memorised": bool(flags[i]),
        }
        if feature is not None and calibration.feature is not None:
            k = int(feature.index[i])
            record["nearest_feature_train_image"] = bank.paths[k]
            record["feature_distance"] = round(float(feature.distance[i]), 6)
            record["memorised_feature"] = bool(
                calibration.feature.flags(feature.distance[i : i + 1])[0]
            )
        records.append(record)
    return records


def audit_images(
    images: Sequence[Image.Image],
    files: Sequence[str],
    bank: TrainBank,
    calibration: Calibration,
    classes: Sequence[str | None] | None = None,
    features: FeatureFn | None = None,
    device: str | None = None,
) -> list[Record]:
    """Audit pictures held in memory (e.g. one model's samples, ``classes`` = prompted class)."""
    return audit_encoded(
        encode(images, bank.spec, features), files, bank, calibration, classes, device
    )


def _group(records: Sequence[Record], flag: str) -> dict[str, Any]:
    n = len(records)
    k = sum(bool(r.get(flag)) for r in records)
    distances = [r["distance"] for r in records]
    return {
        "n": n,
        "n_memorised": k,
        "share_memorised": k / n if n else 0.0,
        "min_distance": min(distances) if n else None,
        "median_distance": float(np.median(distances)) if n else None,
    }


def summarise(
    records: Sequence[Record], calibration: Calibration, skipped: Sequence[Record] = ()
) -> dict[str, Any]:
    """Counts and shares, pooled and per labelled class, with the threshold that made them."""
    summary: dict[str, Any] = {**_group(records, "memorised"), "n_skipped": len(skipped)}
    summary.update(calibration.pixel.summary())
    summary["space"] = "pixel"
    if calibration.feature is not None:
        summary["feature_threshold"] = calibration.feature.summary()
        summary["n_memorised_feature"] = sum(bool(r.get("memorised_feature")) for r in records)
    by_class: dict[str, list[Record]] = {}
    for r in records:
        if r.get("class_name"):
            by_class.setdefault(r["class_name"], []).append(r)
    summary["per_class"] = {c: _group(rs, "memorised") for c, rs in sorted(by_class.items())}
    return summary


def summary_table(records_by_model: Mapping[str, Sequence[Record]]) -> pd.DataFrame:
    """One row per (model, class_name) plus class ``all``: the audit's table for reports."""
    rows = []
    for model, records in records_by_model.items():
        groups: dict[str, list[Record]] = {"all": list(records)}
        for r in records:
            if r.get("class_name"):
                groups.setdefault(r["class_name"], []).append(r)
        for class_name, rs in groups.items():
            rows.append({"model": model, "class_name": class_name, **_group(rs, "memorised")})
    return pd.DataFrame(rows)


def folder_files(folder: Path, exclude: Sequence[Path] = ()) -> list[Path]:
    """Every non-hidden file under ``folder`` (sorted), except the report's own outputs."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory")
    excluded = {p.resolve() for p in exclude}
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.resolve() not in excluded
    )


def readable(files: Sequence[Path], folder: Path, skipped: list[Record]) -> Iterator[Image.Image]:
    """Decoded pictures of ``files``; each one that fails is appended to ``skipped``."""
    for path in files:
        try:
            with Image.open(path) as im:
                im.load()
                if im.width < 1 or im.height < 1:
                    raise ValueError("empty image")
                picture = im.copy()
        except Exception as exc:  # any undecodable input is reported, never fatal
            skipped.append({"file": str(path.relative_to(folder)), "reason": _reason(exc)})
            continue
        yield picture


def _reason(exc: Exception) -> str:
    return f"unreadable image: {type(exc).__name__}: {exc}"[:300]


def audit_folder(
    folder: str | Path,
    bank: TrainBank,
    calibration: Calibration,
    features: FeatureFn | None = None,
    exclude: Sequence[Path] = (),
    device: str | None = None,
) -> dict[str, Any]:
    """The REPORT.json of ``llcm audit``: ``images``, ``skipped`` and ``summary``.

    A file's class is its parent folder's name when that is a MedImgs class (so a folder laid
    out like ``medimgs/images/<split>/<class>/`` is summarised per class).
    """
    folder = Path(folder)
    files = folder_files(folder, exclude)
    skipped: list[Record] = []
    enc = encode(readable(files, folder, skipped), bank.spec, features)
    bad = {s["file"] for s in skipped}
    names = [str(p.relative_to(folder)) for p in files]
    names = [n for n in names if n not in bad]
    known = set(bank.class_names)
    classes = [Path(n).parent.name if Path(n).parent.name in known else None for n in names]
    records = audit_encoded(enc, names, bank, calibration, classes, device)
    summary = summarise(records, calibration, skipped)
    summary.update(folder=str(folder), n_train=len(bank), pixel_spec=bank.spec.as_dict())
    return {"images": records, "skipped": skipped, "summary": summary}
