"""The Dagster resources an asset test materialises with: params, data directory, MLflow store
and launcher, in one call so the tests differ only in what they vary."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def asset_resources(
    root: Path,
    *,
    params_file: Path | None = None,
    overrides: list[str] | None = None,
    tracking_uri: str | None = None,
    processes: int = 0,
) -> dict[str, Any]:
    """Resources on the ``micro`` preset (``params_file`` or params.yaml with ``overrides``);
    ``processes`` > 0 launches the stage through the ``local`` launcher with that many ranks,
    0 runs it in process."""
    from pipeline.launcher import LauncherResource
    from pipeline.resources import DataResource, MlflowResource, ParamsResource

    launcher = (
        LauncherResource(kind="local", num_processes=processes) if processes else LauncherResource()
    )
    return {
        "params": ParamsResource(
            path=str(params_file) if params_file else None,
            preset="micro",
            overrides=list(overrides or []),
        ),
        "data": DataResource(root=str(root)),
        "mlflow": MlflowResource(tracking_uri=tracking_uri),
        "launcher": launcher,
    }
