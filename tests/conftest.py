"""Shared fixtures: an isolated data directory and the ``micro`` preset for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ops.config import load_params
from ops.layout import DataLayout

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own data dir; nothing reaches the repo's ./data or the network."""
    monkeypatch.setenv("LLCM_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LLCM_PRESET", raising=False)
    monkeypatch.delenv("LLCM_PARAMS", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # no test writes the caller's instance


@pytest.fixture(scope="module")
def one_torch_thread():
    """The whole module on one torch thread: micro models gain nothing from a second one, and
    on a shared 2-core machine OpenMP workers only spin (``ops.training.runtime.torch_threads``).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    from ops.training.runtime import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture
def omp_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Launched processes on one OpenMP thread each: two ranks on two shared cores must not
    contend."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def layout(tmp_path: Path) -> DataLayout:
    return DataLayout.from_env(tmp_path / "data")


@pytest.fixture
def micro_params() -> dict:
    """params.yaml with the micro preset: every stage trains in seconds."""
    return load_params(REPO / "params.yaml", preset="micro")


@pytest.fixture
def repo_root() -> Path:
    return REPO


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
