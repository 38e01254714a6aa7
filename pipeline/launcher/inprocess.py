"""The ``inprocess`` launcher: the stage function runs in the asset's own process.

What ``llcm stage`` does too; no accelerate, no Pipes, so extra launch arguments make no sense.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.launcher.commands import LauncherKind, StageRun, dagster_metadata
from pipeline.pipes_entry import resolve_stage
from pipeline.resources import DataResource, ParamsResource


def run_inprocess(
    stage: str, params: ParamsResource, data: DataResource, extra_args: Sequence[str] = ()
) -> StageRun:
    """Call the stage (a ``STAGES`` name or ``module:function``) here; its summary and metadata."""
    if extra_args:
        raise ValueError("extra_args need a launched process (kind local or k8s)")
    summary = resolve_stage(stage)(params.load(), data.layout) or {}
    metadata = {**dagster_metadata(summary), "launcher": LauncherKind.inprocess.value}
    return StageRun(stage, dict(summary), metadata)
