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
