"""Stage ``medimgs_manifest``: clean the raw sources into MedImgs.

raw/index.parquet + raw/sources.json -> enumerate files and archive members (unsafe ones
rejected) -> decode, normalise and hash in ``ingest.workers`` processes -> sort -> deduplicate
-> split -> ``medimgs/images/<split>/<class>/<image_id>.jpg`` and the manifest, rejects and
duplicates tables, plus a sample grid. The new dataset is assembled in the data directory's
tmp folder and swapped in whole, so a failed run never leaves a half-written MedImgs. Output is
identical whatever the number of workers.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from itertools import repeat
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from ops.data.cleaning.decoded import DecodeOptions
from ops.data.cleaning.frames import FramePolicy
from ops.data.cleaning.items import Outcome, WorkItem, enumerate_source
from ops.data.cleaning.nifti import axis_index
from ops.data.pool import process_pool
from ops.data.cleaning.report import class_table, sample_grid
from ops.data.cleaning.split import assign_splits, deduplicate
from ops.data.cleaning.tables import duplicates_frame, manifest_frame, rejects_frame
from ops.data.cleaning.worker import DecodeSettings, process_chunk
from ops.config import stage_config
from ops.layout import DataLayout
from ops.data.sources.materialize import read_sources_record
from ops.data.sources.raw_index import write_parquet
from ops.data.sources.registry import SourceSpec

log = logging.getLogger(__name__)
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024
GRID_NAME = "sample_grid.png"


def build_medimgs(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Stage function (``llcm stage medimgs_manifest``, Dagster asset ``medimgs_manifest``)."""
    cfg = stage_config(params, "ingest")
    template = (params.get("prompts") or {}).get(
        "template"
    ) or "{modality} of a {species} {body_part}, {disease}"
    return clean_raw(layout, cfg, template)


def settings_from(cfg: dict[str, Any], staging: Path) -> DecodeSettings:
    return DecodeSettings(
        resolution=int(cfg["resolution"]),
        jpeg_quality=int(cfg.get("jpeg_quality", 95)),
        max_file_bytes=int(cfg.get("max_file_bytes", DEFAULT_MAX_FILE_BYTES)),
        staging=str(staging),
        decode=decode_options_from(cfg),
    )


def decode_options_from(cfg: dict[str, Any]) -> DecodeOptions:
    """The decoding part of ``ingest:``; absent keys take the documented defaults."""
    low, high = (float(p) for p in cfg.get("nifti_percentiles", (1.0, 99.0)))
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"ingest.nifti_percentiles [{low}, {high}] is not 0 <= low < high <= 100")
    return DecodeOptions(
        max_pixels=int(cfg["max_image_pixels"]),
        frames=FramePolicy(
            str(cfg.get("frame_policy", "middle")), int(cfg.get("frame_every_k", 4))
        ),
        nifti_axis=axis_index(cfg.get("nifti_axis", "axial")),
        nifti_percentiles=(low, high),
        reject_burned_in=bool(cfg.get("reject_burned_in_annotation", True)),
    )


def load_raw(layout: DataLayout) -> tuple[pd.DataFrame, dict[str, SourceSpec]]:
    """The raw index and the spec each indexed source was fetched with."""
    if not layout.raw_index.is_file():
        raise FileNotFoundError(f"{layout.raw_index} does not exist: materialise raw_sources first")
    index = pd.read_parquet(layout.raw_index)
    record = read_sources_record(layout)
    specs = {}
    for name in sorted(index["source"].unique()):
        entry = record.get(name) or {}
        if "spec" not in entry:
            raise ValueError(f"raw/sources.json has no spec for source {name!r}: rerun raw_sources")
        specs[name] = SourceSpec.from_dict(entry["spec"])
    return index, specs


def enumerate_all(
    layout: DataLayout, index: pd.DataFrame, specs: dict[str, SourceSpec], max_file_bytes: int
) -> tuple[list[WorkItem], list[Outcome]]:
    items: list[WorkItem] = []
    early: list[Outcome] = []
    for name, rows in index.groupby("source", sort=True):
        found, decided = enumerate_source(
            specs[str(name)], layout.raw_source(str(name)), rows.to_dict("records"), max_file_bytes
        )
        items += found
        early += decided
    return items, early


def make_chunks(items: list[WorkItem], workers: int) -> list[list[WorkItem]]:
    """Chunks of items sharing a container (so a worker opens each archive once per chunk),
    small enough to keep every worker busy."""
    size = max(8, min(256, -(-len(items) // max(1, workers * 4))))
    groups: dict[tuple[str, str | None], list[WorkItem]] = {}
    for item in items:
        key = (item.source, item.path if item.member_index is not None else None)
        groups.setdefault(key, []).append(item)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


def decode_all(items: list[WorkItem], settings: DecodeSettings, workers: int) -> list[Outcome]:
    """Run the workers; one worker runs in this process (no pool to start)."""
    chunks = make_chunks(items, workers)
    bar = {"total": len(items), "desc": "decode", "unit": "img", "disable": None, "leave": False}
    outcomes: list[Outcome] = []
    with tqdm(**bar) as progress:
        if workers <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                outcomes += process_chunk(chunk, settings)
                progress.update(len(chunk))
            return outcomes
        with process_pool(min(workers, len(chunks)), "ops.data.cleaning.worker") as pool:
            results = pool.map(process_chunk, chunks, repeat(settings))
            for chunk, result in zip(chunks, results, strict=True):
                outcomes += result  # a file may give several frames: progress counts files
                progress.update(len(chunk))
    return outcomes


def clean_raw(
    layout: DataLayout, cfg: dict[str, Any], template: str, workers: int | None = None
) -> dict[str, Any]:
    """Clean everything the raw index lists into ``layout.medimgs``; returns a summary."""
    index, specs = load_raw(layout)
    staging, build = layout.tmp / "medimgs-staging", layout.tmp / "medimgs-build"
    for folder in (staging, build):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    settings = settings_from(cfg, staging)
    items, early = enumerate_all(layout, index, specs, settings.max_file_bytes)
    workers = int(workers if workers is not None else cfg.get("workers", 1))
    outcomes = early + decode_all(items, settings, workers)
    outcomes.sort(key=lambda o: o.key)
    kept, duplicate_pairs = deduplicate(outcomes)
    splits = assign_splits(
        kept, float(cfg["test_fraction"]), int(cfg["max_train_per_class"]), int(cfg["seed"])
    )
    manifest = manifest_frame(kept, splits, template, settings.resolution)
    rejects = rejects_frame(outcomes)
    duplicates = duplicates_frame(duplicate_pairs)
    for rel, iid in zip(manifest["path"], manifest["image_id"], strict=True):
        target = build / Path(rel).relative_to("medimgs")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / f"{iid}.jpg", target)
    write_parquet(manifest, build / layout.manifest.name)
    write_parquet(rejects, build / layout.rejects.name)
    write_parquet(duplicates, build / layout.duplicates.name)
    _swap_into_place(build, layout.medimgs, layout.tmp / "medimgs-old")
    shutil.rmtree(staging, ignore_errors=True)
    grid = sample_grid(manifest, layout.root, layout.medimgs / GRID_NAME)
    accounted = len({(o.source, o.source_file) for o in outcomes})
    return summarize(layout, manifest, rejects, duplicates, accounted, grid)


def summarize(
    layout: DataLayout,
    manifest: pd.DataFrame,
    rejects: pd.DataFrame,
    duplicates: pd.DataFrame,
    accounted: int,
    grid: Path | None,
) -> dict[str, Any]:
    table = class_table(manifest)
    return {
        "kept": len(manifest),
        "train": int((manifest["split"] == "train").sum()),
        "test": int((manifest["split"] == "test").sum()),
        "duplicates": len(duplicates),
        "rejected": len(rejects),
        "accounted": accounted,
        "rejects_by_reason": dict(sorted(Counter(rejects["reason"]).items())),
        "classes": {
            row.class_name: {
                "train": int(row.train),
                "test": int(row.test),
                "holdout": bool(row.holdout),
            }
            for row in table.itertuples(index=False)
        },
        "sources": dict(sorted(Counter(manifest["source"]).items())),
        "manifest": str(layout.manifest.relative_to(layout.root)),
        "sample_grid": str(grid.relative_to(layout.root)) if grid else None,
    }


def _swap_into_place(new: Path, target: Path, old: Path) -> None:
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
