"""The MLflow registry: register the micro consistency pipeline in a real sqlite store."""

from __future__ import annotations

import io

import mlflow
import pandas as pd
import pytest
from micro_sd import IMAGE_SIZE, micro_registry
from PIL import Image

from ops.distill.registry import (
    ModelNotFoundError,
    load_pyfunc,
    resolve_model_uri,
    set_champion,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store: 'llcm' v1 (champion) and v2 registered."""
    return micro_registry(tmp_path_factory)


def test_register_sets_version_alias_tags_and_run(store):
    v1, v2 = store["v1"], store["v2"]
    assert (str(v1.version), str(v2.version)) == ("1", "2")
    assert v1.aliases == ["champion"] and v2.aliases == []
    assert v1.tags["solver"] == "leapfrog" and v1.tags["k"] == "20"
    run = mlflow.MlflowClient().get_run(v1.run_id)
    assert run.data.metrics["fid"] == 12.5
    assert run.data.params["distill.k"] == "20" and run.data.params["model.solver"] == "leapfrog"
    # The store and every artifact live under the data directory.
    root = store["layout"].root
    assert mlflow.get_tracking_uri() == f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    assert run.info.artifact_uri.startswith((root / "mlflow" / "artifacts").as_uri())


def test_resolve_alias_downloads_into_the_data_dir(store):
    layout, params = store["layout"], store["params"]
    path = resolve_model_uri("models:/llcm@champion", layout, params)
    assert (path / "model_index.json").is_file() and (path / "unet" / "config.json").is_file()
    assert path.is_relative_to(layout.root / "mlflow" / "downloads" / "llcm" / "v1")
    assert resolve_model_uri("models:/llcm/2", layout, params).is_relative_to(
        layout.root / "mlflow" / "downloads" / "llcm" / "v2"
    )
    # A local directory resolves to itself.
    assert resolve_model_uri(store["model_dir"]) == store["model_dir"].resolve()


def test_set_champion_moves_the_alias(store):
    layout, params = store["layout"], store["params"]
    set_champion("llcm", 2, layout=layout, params=params)
    try:
        assert "v2" in str(resolve_model_uri("models:/llcm@champion", layout, params))
    finally:
        set_champion("llcm", 1, layout=layout, params=params)
    with pytest.raises(ModelNotFoundError, match="cannot set champion"):
        set_champion("llcm", 9, layout=layout, params=params)


def test_pyfunc_predict_returns_png_images(store):
    model = load_pyfunc("models:/llcm@champion", store["layout"], store["params"], True)
    frame = pd.DataFrame({"prompt": ["brain mri", "knee ct"], "seed": [0, 1]})
    images = model.predict(frame, params={"num_images": 2, "steps": 2})
    assert len(images) == 4
    decoded = Image.open(io.BytesIO(images[0]))
    assert decoded.format == "PNG" and decoded.size == (IMAGE_SIZE, IMAGE_SIZE)
    single = model.predict({"prompt": "chest x-ray", "num_images": 3, "seed": 5})
    assert len(single) == 3
    assert model.predict({"prompt": "chest x-ray", "num_images": 3, "seed": 5}) == single
    # an optional gamma column samples with TCD; a missing value keeps the model's sampler
    mixed = pd.DataFrame({"prompt": ["chest x-ray"] * 2, "seed": [5, 5], "gamma": [0.3, None]})
    tcd, own = model.predict(mixed, params={"steps": 4})
    assert own == model.predict({"prompt": "chest x-ray", "seed": 5})[0] and tcd != own


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/nope@champion", "no registered model 'nope'"),
        ("models:/llcm@best", "has no alias 'best' (aliases: champion)"),
        ("models:/llcm/7", "has no version 7"),
    ],
)
def test_unknown_models_are_clear_errors(store, uri, message):
    with pytest.raises(ModelNotFoundError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_model_uri(uri, store["layout"], store["params"])


def test_bad_uris_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="neither models:/<name>@<alias>"):
        resolve_model_uri("models:/a/b/c")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        resolve_model_uri(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        resolve_model_uri(tmp_path)


def test_register_inside_the_trainers_run(store, monkeypatch):
    """In an active run, the version belongs to it and already logged params are kept."""
    import mlflow.utils.environment as mlflow_env

    from ops.distill.registry import register_model
    from ops.tracking.mlflow_setup import setup_mlflow

    monkeypatch.setattr(mlflow_env, "warn_dependency_requirement_mismatches", lambda reqs: None)
    experiment = setup_mlflow(store["layout"], store["params"])
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_param("distill.k", "20")
        mlflow.log_param("distill.loss", "l2")  # differs from params: must not be relogged
        version = register_model(
            store["model_dir"], "llcm-trainer", store["params"], store["layout"]
        )
    assert version.run_id == run.info.run_id and str(version.version) == "1"
    logged = mlflow.get_run(run.info.run_id).data.params
    assert logged["distill.loss"] == "l2" and logged["model.solver"] == "leapfrog"
