"""Where a training stage runs: in the asset's process, under local ``accelerate launch``, or in
GPU pods on Kubernetes; the asset code is the same for all three.

An asset asks ``launcher.run_stage(context, "teacher", params=params, data=data)`` and gets a
``StageRun`` (the stage's summary dict and the metadata to attach). Which of the three happens
is resource configuration, so a laptop run (``inprocess``), a 2-process CPU smoke test of the
distributed path (``local``) and the 8xA100 paper run (``k8s``) use one asset graph:

- ``inprocess`` (``inprocess.py``): call the stage function directly, as ``llcm stage`` does.
- ``local`` (``local.py``, ``local_pipes.py``): ``accelerate launch`` of ``python -m pipeline.pipes_entry STAGE ...`` through Dagster
  Pipes; rank 0 streams logs and reports the summary and materialisation metadata back.
- ``k8s`` (``k8s.py``, ``k8s_spec.py``): the same command in one pod per machine, rank 0 through ``PipesK8sClient``, worker
  ranks as plain pods that find rank 0 through a headless Service (pod specs: ``k8s_spec``).

A failed launch raises ``dagster.Failure`` with the last lines of the launch's stderr (local) or
of the rank-0 pod's log (k8s), so the failed materialisation says why.

``LauncherResource`` (``resource.py``) holds the settings of all three and dispatches;
``commands.py`` builds the ``accelerate launch`` command line they share. Training entrypoints
that are not stages go through ``launch(context,
["-m", "ops.entry", "teacher", ...])``: any script accelerate can run, with the same Pipes wiring.
"""

from pipeline.launcher.commands import (
    CPU_CONFIG,
    LauncherKind,
    MixedPrecision,
    StageRun,
    accelerate_command,
    dagster_metadata,
    free_port,
    stage_script,
)
from pipeline.launcher.k8s import (
    GPU_POOL_TAG,
    MULTI_NODE_CONFIG,
    SINGLE_NODE_CONFIG,
    K8sLaunchPlan,
    new_launch_id,
    training_run_tags,
)
from pipeline.launcher.resource import LauncherResource

__all__ = [
    "CPU_CONFIG",
    "GPU_POOL_TAG",
    "MULTI_NODE_CONFIG",
    "SINGLE_NODE_CONFIG",
    "K8sLaunchPlan",
    "LauncherKind",
    "LauncherResource",
    "MixedPrecision",
    "StageRun",
    "accelerate_command",
    "dagster_metadata",
    "free_port",
    "new_launch_id",
    "stage_script",
    "training_run_tags",
]
