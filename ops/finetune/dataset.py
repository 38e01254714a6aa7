"""A custom dataset in its workspace ``custom/<name>/``: ingested from a user's sources, or
exported from a held-out family of the base MedImgs; and the classes it teaches.

Ingestion is ``llcm ingest``'s own (fetch, decode, reject, deduplicate, split), written into
the workspace's ``raw/`` and ``medimgs/``: the same manifests, the same rejects table.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from typing import Any

from ops.config import stage_config
from ops.data.cleaning.build import clean_raw
from ops.data.sources.materialize import materialize_specs
from ops.data.sources.registry import SourceSpec
from ops.eval.context import training_prompts
from ops.layout import DataLayout, FinetuneLayout
from ops.training.image_data import base_training_rows, read_manifest

REQUEST_FILE = "request.json"


def ingest_sources(
    params: dict[str, Any], workspace: FinetuneLayout, specs: Sequence[SourceSpec]
) -> dict[str, Any]:
    """Fetch and clean ``specs`` into the workspace; fails when a source could not be read."""
    cfg = stage_config(params, "ingest")
    fetched = materialize_specs(list(specs), workspace, cfg)
    if fetched["failures"]:
        raise ValueError("; ".join(str(e) for e in fetched["failures"].values()))
    cleaned = clean_raw(workspace, cfg, params["prompts"]["template"])
    save_request(workspace, specs)
    return {"raw": fetched, "medimgs": cleaned}


def save_request(workspace: FinetuneLayout, specs: Sequence[SourceSpec]) -> None:
    """What the workspace was ingested from: a later run (the Dagster partition) repeats it."""
    record = [
        {
            "name": s.name,
            "kind": s.kind,
            "location": s.location,
            "default_labels": dict(s.default_labels),
            "exclude": list(s.exclude),
        }
        for s in specs
    ]
    workspace.root.mkdir(parents=True, exist_ok=True)
    (workspace.root / REQUEST_FILE).write_text(json.dumps(record, indent=2) + "\n")


def saved_request(workspace: FinetuneLayout) -> list[SourceSpec]:
    """The sources a workspace was last ingested from (``[]`` if none was recorded)."""
    path = workspace.root / REQUEST_FILE
    if not path.is_file():
        return []
    return [
        SourceSpec(
            name=r["name"],
            kind=r["kind"],
            location=r["location"],
            license_note="given on the command line; check its terms",
            default_labels=r["default_labels"],
            exclude=tuple(r["exclude"]),
        )
        for r in json.loads(path.read_text())
    ]


def export_family(base: DataLayout, workspace: FinetuneLayout, classes: Sequence[str]) -> int:
    """Copy the base MedImgs rows and images of ``classes`` (a held-out family) into the
    workspace, as that workspace's own dataset (``holdout`` false: here they are trained on).
    The splits stay the base split's. Returns the number of rows."""
    manifest = read_manifest(base)
    rows = manifest[manifest["class_name"].isin(list(classes))].copy()
    missing = sorted(set(classes) - set(rows["class_name"]))
    if missing:
        raise ValueError(f"the base MedImgs has no rows of {', '.join(missing)}")
    rows["holdout"] = False
    for rel in rows["path"]:
        target = workspace.root / rel
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base.root / rel, target)
    workspace.manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = workspace.manifest.with_name(".manifest.parquet.tmp")
    rows.sort_values("image_id").to_parquet(tmp, index=False)
    tmp.replace(workspace.manifest)
    return len(rows)


def custom_classes(workspace: DataLayout) -> dict[str, str]:
    """Class -> prompt of the workspace's training rows: what the fine-tune teaches."""
    train = base_training_rows(read_manifest(workspace))
    if train.empty:
        raise ValueError(f"{workspace.manifest}: no training images to fine-tune on")
    return training_prompts(train, sorted(train["class_name"].unique()))


def train_counts(workspace: DataLayout) -> dict[str, int]:
    train = base_training_rows(read_manifest(workspace))
    return {str(k): int(v) for k, v in train["class_name"].value_counts().sort_index().items()}


def class_table(classes: dict[str, str], counts: dict[str, int] | None = None) -> str:
    """The class -> prompt table a fine-tune prints (markdown)."""
    lines = ["| class | prompt | train images |", "|---|---|---:|"]
    for name, prompt in classes.items():
        n = int(counts.get(name, 0)) if counts is not None else ""
        lines.append(f"| {name} | {prompt} | {n} |")
    return "\n".join(lines)
