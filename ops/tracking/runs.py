"""One MLflow run per training stage, written by the main process only.

Built on ``MlflowClient`` with an explicit run id rather than the fluent ``mlflow.start_run``,
so no global "active run" leaks between stages that share a Python process. On every other
process the object is inert: its methods do nothing and ``run_id`` is ``None``. A resumed
training run passes the run id stored in its checkpoint and keeps logging into the same run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ops.layout import DataLayout, FinetuneLayout
from ops.tracking.mlflow_setup import flatten, setup_mlflow

MAX_PARAM_LENGTH = 6000


class MlflowRun:
    """Logging handle of one run; inert when ``client`` is ``None`` (non-main processes)."""

    def __init__(self, client: Any | None, run_id: str | None) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def start(
        cls,
        layout: DataLayout,
        params: Mapping[str, Any],
        stage: str,
        *,
        active: bool = True,
        run_id: str | None = None,
    ) -> MlflowRun:
        """Create the stage's run, or reopen ``run_id`` (a resumed run) if it still exists."""
        if not active:
            return cls(None, None)
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        experiment_id = setup_mlflow(layout, dict(params))
        client = MlflowClient()
        if run_id:
            try:
                client.update_run(run_id, status="RUNNING")
                return cls(client, run_id)
            except MlflowException:
                pass  # the store was reset since the checkpoint: start a fresh run
        tags = {"stage": stage, "preset": str(params.get("preset"))}
        run = client.create_run(experiment_id, tags=tags, run_name=f"{stage}-{params['preset']}")
        return cls(client, run.info.run_id)

    @property
    def active(self) -> bool:
        return self.client is not None

    def log_params(self, values: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in sorted(flatten(values).items())]
        existing = self.client.get_run(self.run_id).data.params
        fresh = [p for p in items if p.key not in existing]  # a resumed run logged them
        for start in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[start : start + 100])

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.active:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: Path, artifact_path: str | None = None) -> None:
        if self.active:
            self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.active:
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, str(value))

    def finish(self, status: str = "FINISHED") -> None:
        if self.active:
            self.client.set_terminated(self.run_id, status)


def resume_and_start_run(
    store: Any, layout: DataLayout, params: Mapping[str, Any], stage: str, accelerator: Any
) -> tuple[Any, MlflowRun]:
    """The newest checkpoint of ``store`` (or None) and the stage's MLflow run: the run the
    checkpoint logged into when resuming, so a resumed training keeps one run."""
    resume = store.latest()
    if isinstance(layout, FinetuneLayout):  # a fine-tune's runs say whose they are
        stage = f"finetune-{layout.name}-{stage}"
    run = MlflowRun.start(
        layout,
        params,
        stage,
        active=accelerator.is_main_process,
        run_id=resume.state.get("mlflow_run_id") if resume else None,
    )
    return resume, run
