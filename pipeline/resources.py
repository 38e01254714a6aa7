"""Dagster resources: configuration, data layout and MLflow tracking.

Every field can be set per run in the launchpad, so a run can use another preset or override
any params key (``overrides: ["distill.k=10"]``) without editing files.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from ops.config import load_params, stage_config
from ops.layout import DataLayout
from ops.tracking.mlflow_setup import setup_mlflow


class ParamsResource(dg.ConfigurableResource):
    """params.yaml, the preset and run-level overrides."""

    path: str | None = None
    preset: str | None = None
    overrides: list[str] = []

    def load(self) -> dict[str, Any]:
        return load_params(self.path, self.preset, self.overrides)

    def stage(self, name: str) -> dict[str, Any]:
        return stage_config(self.load(), name)


class DataResource(dg.ConfigurableResource):
    """The data directory (``$LLCM_DATA`` by default)."""

    root: str | None = None

    @property
    def layout(self) -> DataLayout:
        return DataLayout.from_env(self.root)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry; the default store lives in the data directory."""

    tracking_uri: str | None = None

    def setup(self, layout: DataLayout, params: dict[str, Any]) -> str:
        if self.tracking_uri:
            params = {
                **params,
                "mlflow": {**params.get("mlflow", {}), "tracking_uri": self.tracking_uri},
            }
        return setup_mlflow(layout, params)


def default_resources() -> dict[str, Any]:
    return {"params": ParamsResource(), "data": DataResource(), "mlflow": MlflowResource()}
