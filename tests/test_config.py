import pytest

from ops.config import ConfigError, load_params, stage_config


def test_preset_merges_into_stage(repo_root):
    params = load_params(repo_root / "params.yaml", preset="tiny")
    cfg = stage_config(params, "distill")
    assert cfg["k"] == 20 and cfg["steps"] == params["presets"]["tiny"]["distill"]["steps"]


def test_override_changes_value(repo_root):
    params = load_params(repo_root / "params.yaml", overrides=["distill.k=10"])
    assert stage_config(params, "distill")["k"] == 10


def test_unknown_override_key_is_a_clear_error(repo_root):
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(repo_root / "params.yaml", overrides=["distill.kk=10"])


def test_unknown_preset_is_a_clear_error(repo_root):
    with pytest.raises(ConfigError, match="unknown preset"):
        load_params(repo_root / "params.yaml", preset="nope")


def test_key_in_both_places_is_refused(repo_root, tmp_path):
    text = (repo_root / "params.yaml").read_text().replace("  k: 20", "  k: 20\n  steps: 3", 1)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="one place"):
        stage_config(load_params(path), "distill")


def test_mlflow_store_follows_the_data_dir_not_the_uri_mlflow_exported(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; a second data dir in the same
    process must still get its own store, while a user's own variable is respected."""
    from ops.layout import DataLayout
    from ops.tracking.mlflow_setup import setup_mlflow, tracking_uri

    first, second = DataLayout(tmp_path / "a"), DataLayout(tmp_path / "b")
    params = {"mlflow": {"experiment": "llcm"}}
    setup_mlflow(first, params)
    setup_mlflow(second, params)
    assert tracking_uri(second) == f"sqlite:///{second.mlflow_db}"
    assert second.mlflow_db.is_file() and first.mlflow_db.is_file()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(second) == "http://127.0.0.1:5000"
