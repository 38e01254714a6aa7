"""Which real images a class is compared against (the *reference*) and which real images
measure the floor (model ``real``): an evaluation-only phantom draw, or the manifest's splits.

Why a separate draw for phantoms: the tiny test split holds ~10 images per class, too few for
a 32-d covariance (rank <= n - 1) and for any interval. The phantom source can draw any number
of images of a class from a seed, so the benchmark draws its own evaluation sets, never used
for training and disjoint from train and test:

* same generator (``ops.data.sources.phantoms.draw_phantom``), same ``ingest.seed``, image
  indices from ``EVAL_INDEX_OFFSET`` on (training uses 0 .. ``phantoms_per_class`` - 1), so
  the random streams are disjoint by construction; any image whose content id is in the
  manifest anyway is dropped;
* the normalisation cleaning applies to kept images: ``fit_square`` to ``ingest.resolution``
  and JPEG at ``ingest.jpeg_quality`` (``ops.data.cleaning.normalize``); the raw-file
  round trip of some families (DICOM windowing, 16-bit PNG) is skipped, it changes pixels by
  at most a grey level;
* ``reference`` (``reference_images_per_class`` per class) and ``floor`` (as many again) are
  two independent draws; the floor row compares the latter with the former;
* ``benchmark.draw: validation`` draws both from ``VALIDATION_INDEX_OFFSET`` on instead (and
  generates from other seeds, ``ops.eval.settings``): the set to tune a recipe on, so that
  the evaluation's reference images never choose a hyperparameter.

Classes of other sources use their test split as reference and their train split (real
images, disjoint from the test split) as the floor sample. Files: ``reports/eval_reference/
<set>/<class>/<image_id>.jpg`` and ``reports/eval_reference.parquet`` (one row per image);
the validation draw's under ``reports/val_reference``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd

from ops.config import stage_config
from ops.layout import DataLayout

EVAL_INDEX_OFFSET = 1_000_000_000
VALIDATION_INDEX_OFFSET = 2_000_000_000  # benchmark.draw: validation, the draw to tune on
FLOOR_INDEX_OFFSET = 1_000_000  # within the evaluation indices
FOLDER = "eval_reference"
VALIDATION_FOLDER = "val_reference"  # the validation draw's images and table, kept apart
REFERENCE, FLOOR = "reference", "floor"


def phantom_keys(params: dict[str, Any]) -> dict[str, str]:
    """{manifest class_name: phantom class key} of the phantom source, if it is ingested."""
    from ops.data.sources.registry import load_registry

    ingest = stage_config(params, "ingest")
    if "phantoms" not in (ingest.get("sources") or []):
        return {}
    spec = load_registry(ingest.get("registry")).get("phantoms")
    return {labels.class_name: key for key, labels in spec.classes.items()} if spec else {}


def _draw_settings(params: dict[str, Any], n: int) -> dict[str, Any]:
    ingest = stage_config(params, "ingest")
    validation = _cfg(params)["draw"] == "validation"
    return {
        "seed": int(ingest["seed"]),
        "resolution": int(ingest["resolution"]),
        "jpeg_quality": int(ingest["jpeg_quality"]),
        "n": int(n),
        "offset": VALIDATION_INDEX_OFFSET if validation else EVAL_INDEX_OFFSET,
        "version": 1,
    }


def _draw_one(key: str, index: int, settings: dict[str, Any]) -> tuple[str, bytes]:
    from PIL import Image

    from ops.data.cleaning.normalize import fit_square, image_id, jpeg_bytes
    from ops.data.sources.phantom_encode import to_uint8
    from ops.data.sources.phantoms import draw_phantom

    pixels = to_uint8(draw_phantom(key, index, settings["seed"]))
    square = fit_square(Image.fromarray(pixels).convert("RGB"), settings["resolution"])
    return image_id(square), jpeg_bytes(square, settings["jpeg_quality"])


def draw_eval_sets(
    params: dict[str, Any], layout: DataLayout, classes: list[str], manifest: pd.DataFrame
) -> pd.DataFrame:
    """The evaluation-only phantom draw of ``classes`` (reused when already on disk with the
    same settings); returns its table (image_id, path, class_name, set, index, draw_key)."""
    keys = phantom_keys(params)
    wanted = [c for c in classes if c in keys]
    n = int(_cfg(params)["reference_images_per_class"])
    settings = _draw_settings(params, n)
    draw_key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder = VALIDATION_FOLDER if settings["offset"] == VALIDATION_INDEX_OFFSET else FOLDER
    table_path = layout.reports / f"{folder}.parquet"
    if table_path.is_file():
        table = pd.read_parquet(table_path)
        if set(table["draw_key"]) == {draw_key} and set(table["class_name"]) >= set(wanted):
            return table[table["class_name"].isin(wanted)].reset_index(drop=True)
    known = set(manifest["image_id"].astype(str))
    rows = []
    for name in wanted:
        for set_name, base in ((REFERENCE, 0), (FLOOR, FLOOR_INDEX_OFFSET)):
            for i in range(n):
                index = settings["offset"] + base + i
                iid, data = _draw_one(keys[name], index, settings)
                if iid in known:  # never compare against an image the models trained on
                    continue
                rel = f"reports/{folder}/{set_name}/{name}/{iid}.jpg"
                path = layout.root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                rows.append((iid, rel, name, set_name, index, draw_key))
    table = pd.DataFrame(
        rows, columns=["image_id", "path", "class_name", "set", "index", "draw_key"]
    )
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(table_path, index=False)
    return table


def _cfg(params: dict[str, Any]) -> dict[str, Any]:
    from ops.eval.settings import benchmark_config

    return benchmark_config(params)


def image_sets(
    params: dict[str, Any], layout: DataLayout, classes: list[str], manifest: pd.DataFrame
) -> dict[str, dict[str, pd.DataFrame]]:
    """{"reference" | "floor": {class: rows (image_id, path)}} for every evaluated class."""
    drawn = draw_eval_sets(params, layout, classes, manifest)
    out: dict[str, dict[str, pd.DataFrame]] = {REFERENCE: {}, FLOOR: {}}
    for name in classes:
        mine = drawn[drawn["class_name"] == name]
        if not mine.empty:
            for set_name in (REFERENCE, FLOOR):
                out[set_name][name] = mine[mine["set"] == set_name]
            continue
        rows = manifest[manifest["class_name"] == name]
        out[REFERENCE][name] = rows[rows["split"] == "test"]
        floor = rows[(rows["split"] == "train")]
        if "holdout" in floor:
            floor = floor[~floor["holdout"].fillna(False).astype(bool)]
        out[FLOOR][name] = floor.sort_values("image_id").head(int(_cfg(params)["images_per_class"]))
    return out
