"""MLflow tracking setup shared by every trainer and the benchmark.

The default store is local: sqlite plus an artifact folder, both under the data directory, so
nothing is written outside it. ``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` in params
points at a server instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ops.layout import DataLayout

# mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses): a value we set
# ourselves must not later pass for the user's choice and pin another data dir's store.
_SET_HERE: set[str] = set()


def tracking_uri(layout: DataLayout, configured: str | None = None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = configured or (env if env not in _SET_HERE else None)
    if uri:
        return uri
    layout.mlflow_db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{layout.mlflow_db}"


def setup_mlflow(layout: DataLayout, params: dict[str, Any]) -> str:
    """Point mlflow at the configured store and make sure the experiment exists.

    Returns the experiment id. The experiment's artifact location is pinned to the data
    directory when the store is the local default.
    """
    import mlflow

    cfg = params.get("mlflow") or {}
    uri = tracking_uri(layout, cfg.get("tracking_uri"))
    _SET_HERE.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = cfg.get("experiment", "llcm")
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        layout.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        location = layout.mlflow_artifacts.as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: nested config as MLflow params."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
