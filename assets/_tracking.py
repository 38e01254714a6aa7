"""How the training assets run their stage: in process with the MLflow resource's tracking URI
folded into params, or launched by the ``launcher`` resource.

The stage functions set up MLflow themselves from ``params["mlflow"]`` (they also run outside
Dagster); a ``tracking_uri`` configured on the ``mlflow`` resource must therefore travel in
the params, or the stage would fall back to the default store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dagster as dg

from ops.layout import DataLayout
from pipeline.launcher import LauncherKind, LauncherResource
from pipeline.resources import DataResource, MlflowResource, ParamsResource
from pipeline.stages import resolve


def tracked_params(
    params: dict[str, Any], mlflow: MlflowResource, layout: DataLayout
) -> dict[str, Any]:
    if mlflow.tracking_uri:
        params = {
            **params,
            "mlflow": {**params.get("mlflow", {}), "tracking_uri": mlflow.tracking_uri},
        }
    mlflow.setup(layout, params)
    return params


def run_training(
    context: dg.AssetExecutionContext,
    launcher: LauncherResource,
    stage: str,
    params: ParamsResource,
    data: DataResource,
    mlflow: MlflowResource,
) -> dict[str, Any]:
    """Run a training stage where the ``launcher`` resource says; return the stage's summary.

    ``inprocess`` calls the stage function here (with the MLflow resource's store); ``local``
    and ``k8s`` launch it under ``accelerate launch`` through Dagster Pipes, and the launched
    ranks read the tracking store from params or ``MLFLOW_TRACKING_URI``. The asset code is
    the same for all three.
    """
    if launcher.kind == LauncherKind.inprocess:
        layout = data.layout
        return resolve(stage)(tracked_params(params.load(), mlflow, layout), layout)
    return launcher.run_stage(context, stage, params=params, data=data).summary


def training_asset(
    name: str,
    *,
    deps: list[str],
    group_name: str,
    description: str,
    metadata: Callable[[dict[str, Any], DataLayout], dict[str, Any]],
    kinds: frozenset[str] = frozenset({"pytorch", "mlflow"}),
    priority: int = 0,
) -> dg.AssetsDefinition:
    """The asset of training stage ``name``: runs it where the ``launcher`` resource says
    (:func:`run_training`) and attaches ``metadata(summary, layout)``. The training assets
    differ only in these arguments, so each module holds just its metadata. ``priority`` is
    Dagster's ``dagster/priority`` op tag: of the steps ready at once, the executor starts the
    highest first (what a critical path needs when steps queue for a concurrency limit)."""

    @dg.asset(
        name=name,
        deps=deps,
        group_name=group_name,
        kinds=set(kinds),
        description=description,
        op_tags={"dagster/priority": str(int(priority))} if priority else None,
    )
    def _asset(
        context,
        params: ParamsResource,
        data: DataResource,
        mlflow: MlflowResource,
        launcher: LauncherResource,
    ) -> dg.MaterializeResult:
        summary = run_training(context, launcher, name, params, data, mlflow)
        return dg.MaterializeResult(metadata=metadata(summary, data.layout))

    return _asset
