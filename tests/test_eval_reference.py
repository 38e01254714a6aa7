"""The evaluation-only phantom draw: disjoint from training, normalised like kept images,
reproducible, and reused when its settings have not changed."""

from __future__ import annotations

import pandas as pd
from PIL import Image

from ops.config import load_params
from ops.eval.reference_sets import FLOOR, REFERENCE, draw_eval_sets, image_sets, phantom_keys


def _manifest(names: list[str]) -> pd.DataFrame:
    rows = [{"image_id": f"train{i}", "path": "x", "split": s, "class_name": n, "holdout": False}
            for n in names for i, s in enumerate(["train", "train", "test", "test"])]  # fmt: skip
    return pd.DataFrame(rows)


def test_phantom_eval_draw_is_disjoint_normalised_and_reused(layout):
    params = load_params(preset="micro")  # 8 reference images per class, 32 px
    keys = phantom_keys(params)
    names = sorted(keys)[:2]
    table = draw_eval_sets(params, layout, names, _manifest(names))
    per = table.groupby(["class_name", "set"]).size()
    assert (per == 8).all() and len(per) == 4
    assert table["image_id"].is_unique  # reference and floor never share an image
    assert (table["index"] >= 1_000_000_000).all()  # training draws indices < phantoms_per_class
    img = Image.open(layout.root / table["path"].iloc[0])
    assert img.format == "JPEG" and img.size == (32, 32)
    again = draw_eval_sets(params, layout, names, _manifest(names))
    pd.testing.assert_frame_equal(again, table)  # reused, not redrawn
    sets = image_sets(params, layout, names, _manifest(names))
    assert set(sets[REFERENCE]) == set(sets[FLOOR]) == set(names)
    assert len(sets[REFERENCE][names[0]]) == 8


def test_other_sources_use_the_test_split_and_train_rows_for_the_floor(layout):
    params = load_params(preset="micro")
    params["ingest"]["sources"] = ["shapes"]
    manifest = _manifest(["disc"])
    sets = image_sets(params, layout, ["disc"], manifest)
    assert (sets[REFERENCE]["disc"]["split"] == "test").all()
    assert (sets[FLOOR]["disc"]["split"] == "train").all()
    assert not (layout.reports / "eval_reference").exists() or not any(
        (layout.reports / "eval_reference").rglob("*.jpg")
    )


def test_validation_draw_shares_no_image_or_seed_with_the_evaluation(layout):
    """``benchmark.draw: validation`` is the set to tune on: other real images (another index
    band, its own folder, the evaluation's table untouched) and other generation seeds."""
    from ops.eval.settings import benchmark_config

    params = load_params(preset="micro")
    validation = load_params(preset="micro", overrides=["benchmark.draw=validation"])
    names = sorted(phantom_keys(params))[:2]
    evaluation = draw_eval_sets(params, layout, names, _manifest(names))
    val = draw_eval_sets(validation, layout, names, _manifest(names))
    assert len(val) == len(evaluation) and (val["index"] >= 2_000_000_000).all()
    assert set(val["image_id"]).isdisjoint(evaluation["image_id"])
    assert val["path"].str.startswith("reports/val_reference/").all()
    pd.testing.assert_frame_equal(draw_eval_sets(params, layout, names, _manifest(names)),
                                  evaluation)  # fmt: skip
    assert benchmark_config(validation)["seed"] != benchmark_config(params)["seed"]
