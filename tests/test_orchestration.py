"""The two orchestrators for real: Dagster's CLI on ``pipeline.definitions`` and ``dvc repro`` /
``dvc exp run -S`` on a fresh copy of the repository (micro preset, ingest stages)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ops.config import REPO_ROOT

VENV_BIN = Path(sys.executable).parent
DVC = shutil.which("dvc") or str(REPO_ROOT / ".venv-dvc" / "bin" / "dvc")
EXPECTED_ASSETS = {
    "raw_sources", "medimgs_manifest", "autoencoder", "latents", "teacher", "llcm", "lcm",
    "llcm2", "llcm_pcm", "llcm_dmd", "dreambooth", "domain_classifier", "benchmark_cells", "benchmark",
}  # fmt: skip


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def test_definitions_hold_every_stage_with_its_dependencies():
    from pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys >= EXPECTED_ASSETS
    parents = {k.to_user_string() for k in graph.get(dg_key("teacher")).parent_keys}
    assert parents == {"latents", "autoencoder"}
    assert {k.to_user_string() for k in graph.get(dg_key("llcm")).parent_keys} >= {"teacher"}
    # DMD2 refines the trained llcm student: it waits for it
    dmd_parents = {k.to_user_string() for k in graph.get(dg_key("llcm_dmd")).parent_keys}
    assert dmd_parents == {"teacher", "latents", "llcm"}


def test_the_dmd_critical_path_goes_first_in_the_executor_queue():
    """make run's two slots: of the distillations ready when the teacher ends, llcm starts
    first and llcm_dmd (which waits for it) as soon as it can; the rest keep priority 0."""
    from pipeline.definitions import defs

    def priority(name: str) -> int:
        return int(defs.get_assets_def(name).op.tags.get("dagster/priority", 0))

    assert priority("llcm") == priority("llcm_dmd") == 1
    assert {priority(name) for name in ("lcm", "llcm2", "llcm_pcm", "dreambooth")} == {0}


def test_make_run_config_shards_the_benchmark_over_two_processes():
    """make run passes configs/make_run.yaml: valid run config for the asset job, whose params
    resource then asks the benchmark for two processes (and nothing else changes)."""
    import dagster as dg

    from ops.config import load_params
    from pipeline.definitions import defs
    from pipeline.resources import ParamsResource

    makefile = (REPO_ROOT / "Makefile").read_text()
    run_rule = makefile[makefile.index("\nrun:") :].split("\n\n")[0]
    assert "-c configs/make_run.yaml" in run_rule
    config = yaml.safe_load((REPO_ROOT / "configs" / "make_run.yaml").read_text())
    job = defs.get_implicit_global_asset_job_def()
    assert dg.validate_run_config(job, config)
    params = ParamsResource(**config["resources"]["params"]["config"]).load()
    assert params["benchmark"]["num_processes"] == 2
    params["benchmark"]["num_processes"] = load_params()["benchmark"]["num_processes"]
    assert params == load_params()


def dg_key(name: str):
    import dagster as dg

    return dg.AssetKey(name)


def test_dagster_cli_materialises_the_ingest_assets_with_a_selection(tmp_path):
    """The selection syntax needs antlr4 4.13 (dvc's hydra would pin 4.9): the real CLI."""
    data = tmp_path / "data"
    env = {**os.environ, "LLCM_DATA": str(data), "LLCM_PRESET": "micro",
           "DAGSTER_HOME": str(tmp_path / "dagster_home")}  # fmt: skip
    (tmp_path / "dagster_home").mkdir()
    run([str(VENV_BIN / "dagster"), "asset", "materialize", "-m", "pipeline.definitions",
         "--select", "key:raw_sources or key:medimgs_manifest"], REPO_ROOT, env)  # fmt: skip
    manifest = pd.read_parquet(data / "medimgs" / "manifest.parquet")
    assert len(manifest) > 0 and set(manifest["split"]) == {"train", "test"}


@pytest.fixture
def fresh_clone(tmp_path) -> Path:
    """The repository as committed plus the working tree's changes, without data or venvs."""
    if not Path(DVC).exists():
        pytest.fail("dvc is not installed: run `make env` (it lives in .venv-dvc)")
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    clone = tmp_path / "clone"
    for rel in files:
        src = REPO_ROOT / rel
        if src.is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, clone / rel)
    (clone / ".venv").symlink_to(REPO_ROOT / ".venv")
    params = yaml.safe_load((clone / "params.yaml").read_text())
    assert params["preset"] == "tiny"  # the shipped default
    text = (clone / "params.yaml").read_text().replace("preset: tiny", "preset: micro", 1)
    (clone / "params.yaml").write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "clone"]):
        subprocess.run(git + cmd, cwd=clone, check=True, capture_output=True)
    return clone


def test_dvc_repro_builds_the_ingest_stages_and_exp_run_set_param_works(fresh_clone):
    env = {k: v for k, v in os.environ.items() if k != "LLCM_DATA"}
    run([DVC, "repro", "medimgs_manifest"], fresh_clone, env)
    manifest = pd.read_parquet(fresh_clone / "data" / "medimgs" / "manifest.parquet")
    lock = yaml.safe_load((fresh_clone / "dvc.lock").read_text())
    assert {"raw_sources", "medimgs_manifest"} <= set(lock["stages"])
    status = run([DVC, "status", "medimgs_manifest"], fresh_clone, env).stdout
    assert "up to date" in status.lower() or "changed" not in status

    # -S works with dvc's own antlr4 (the isolated environment), and reruns only what changed
    run([DVC, "exp", "run", "-S", "ingest.test_fraction=0.5", "medimgs_manifest"], fresh_clone, env)
    after = pd.read_parquet(fresh_clone / "data" / "medimgs" / "manifest.parquet")
    assert (after["split"] == "test").mean() > (manifest["split"] == "test").mean()
    assert "test_fraction: 0.5" in (fresh_clone / "params.yaml").read_text()


def _dvc_deps(stage: dict) -> list[str]:
    body = stage.get("do", stage)
    return [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])]


def test_dvc_code_dependencies_name_existing_modules():
    """Every code path a dvc stage depends on exists, so a moved module cannot silently stop
    re-running the stages that use it."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    code = {
        dep
        for stage in stages.values()
        for dep in _dvc_deps(stage)
        if dep.split("/")[0] in {"ops", "configs", "assets", "pipeline"}
    }
    assert code, "dvc.yaml names no code dependency"
    missing = sorted(dep for dep in code if not (REPO_ROOT / dep).exists())
    assert not missing, missing


def test_dvc_dag_orders_every_stage(fresh_clone):
    env = {k: v for k, v in os.environ.items() if k != "LLCM_DATA"}
    dag = run([DVC, "dag", "--md"], fresh_clone, env).stdout
    for stage in ("raw_sources", "medimgs_manifest", "autoencoder", "teacher", "benchmark"):
        assert stage in dag
