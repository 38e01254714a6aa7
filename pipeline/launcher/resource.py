"""``LauncherResource``: the one Dagster resource assets call to run a stage, whatever the kind.

Its fields configure every kind; ``run_stage`` dispatches to ``inprocess``, ``local`` or ``k8s``
(one module each in this package). Configured in Definitions, per run in the launchpad, or by
``LLCM_LAUNCHER_<FIELD>`` environment variables (``from_env``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import yaml

from pipeline.launcher.commands import (
    LauncherKind,
    MixedPrecision,
    StageRun,
    dagster_metadata,
    free_port,
    stage_script,
)
from pipeline.launcher.inprocess import run_inprocess
from pipeline.launcher.k8s import (
    K8sLaunchPlan,
    K8sTopology,
    k8s_clients,
    new_launch_id,
    plan_launch,
    run_image,
    run_k8s,
    training_run_tags,
)
from pipeline.launcher.k8s_spec import DEFAULT_RDZV_PORT, PodSettings
from pipeline.launcher.local import local_command, local_processes, run_local
from pipeline.pipes_entry import SUMMARY_MESSAGE_KEY
from pipeline.resources import DataResource, ParamsResource

ENV_PREFIX = "LLCM_LAUNCHER_"
#: Fields read from the environment verbatim (YAML would turn "no" into False, "8" into 8).
_STR_FIELDS = frozenset(
    {"kind", "mixed_precision", "accelerate_config", "python", "namespace", "image"}
    | {"image_pull_policy", "service_account", "data_pvc", "data_mount_path"}
    | {"cpu_request", "memory_request", "shm_size"}
)


class LauncherResource(dg.ConfigurableResource):
    """Runs a pipeline stage in-process, under local ``accelerate launch``, or on Kubernetes.

    Assets call ``run_stage`` and never look at ``kind``; switching a deployment from CPU to
    8xA100 is a resource setting (Definitions, or the launchpad per run).
    """

    kind: LauncherKind = LauncherKind.inprocess
    # -- accelerate (local and k8s) --------------------------------------------------------
    num_processes: int | None = None
    """local: processes on this machine (None: from ``accelerate_config``, else 1).
    k8s: ignored; each pod runs ``gpus_per_pod`` processes."""
    mixed_precision: MixedPrecision | None = None
    """Overrides the accelerate config's ``mixed_precision`` when set."""
    accelerate_config: str | None = None
    """Path (relative to the repo / image working dir) of an accelerate config yaml. k8s
    default: 8xA100-bf16.yaml for one machine, multinode-2x8xA100-bf16.yaml for several."""
    main_process_port: int | None = None
    """Rendezvous port; local default: a free port, k8s default: 29500."""
    python: str | None = None
    """Interpreter for local launches (default: this one); ``python`` in the image for k8s."""
    env: dict[str, str] = {}
    """Extra environment for the launched processes (e.g. NCCL_DEBUG=INFO)."""
    # -- k8s ---------------------------------------------------------------------------------
    namespace: str | None = None
    """Namespace of the training pods (default: the current one, else ``default``)."""
    image: str | None = None
    """Image of the training pods (default: the image of the run's own code location)."""
    image_pull_policy: str = "IfNotPresent"
    service_account: str | None = None
    data_pvc: str = "llcm-data"
    """PersistentVolumeClaim holding the data directory (ReadWriteMany for multi-node)."""
    data_mount_path: str = "/data"
    """Where the claim is mounted; also ``LLCM_DATA`` and ``--data`` of the launched stage."""
    gpus_per_pod: int = 8
    num_machines: int = 1
    """Pods (machines) per launch; machine ranks 0..num_machines-1, one per pod."""
    node_selector: dict[str, str] = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    tolerations: list[dict[str, str]] = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    cpu_request: str | None = "64"
    memory_request: str | None = "512Gi"
    shm_size: str = "64Gi"
    pod_wait_timeout_s: float = 7 * 24 * 3600.0
    keep_pods: bool = False
    """Leave pods and service behind after the launch (debugging)."""

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LauncherResource:
        """A launcher configured by ``LLCM_LAUNCHER_<FIELD>`` environment variables.

        Lets a deployment choose the launcher without code: the Helm values set e.g.
        ``LLCM_LAUNCHER_KIND=k8s`` and ``LLCM_LAUNCHER_TOLERATIONS='[{...}]'`` on the user code
        deployment, and run pods inherit them. Values are YAML (so JSON too): numbers, lists
        and mappings come through typed. Unset variables keep the field defaults.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(f"{ENV_PREFIX}{name.upper()}")
            if raw is not None and raw != "":
                values[name] = yaml.safe_load(raw) if name not in _STR_FIELDS else raw
        return cls(**values)

    def run_stage(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        stage: str,
        *,
        params: ParamsResource | None = None,
        data: DataResource | None = None,
        extra_args: Sequence[str] = (),
    ) -> StageRun:
        """Run one stage (a ``STAGES`` name or a ``module:function`` string) and return its
        summary and metadata. ``params``/``data`` are the asset's own resources (defaults:
        params.yaml and ``$LLCM_DATA``)."""
        params = params or ParamsResource()
        data = data or DataResource()
        if self.kind == LauncherKind.inprocess:
            return run_inprocess(stage, params, data, extra_args)
        data_root = self.data_mount_path if self.kind == LauncherKind.k8s else str(data.layout.root)
        script = stage_script(
            stage,
            data_root=data_root,
            params_path=params.path,
            preset=params.preset,
            overrides=params.overrides,
            extra_args=extra_args,
        )
        return self.launch(context, script, name=stage, data_root=data_root)

    def launch(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        script: Sequence[str],
        *,
        name: str | None = None,
        data_root: str | None = None,
    ) -> StageRun:
        """``accelerate launch`` of ``script`` (``["-m", "module", args...]`` or ``["file.py",
        ...]``) through Pipes, locally or on Kubernetes. A script that opens Dagster Pipes on
        rank 0 (as ``pipeline.pipes_entry`` does) reports metadata; any other still runs."""
        name = name or " ".join(script[:2])
        if self.kind == LauncherKind.local:
            command = self.local_command(script)
            env = {"LLCM_DATA": data_root} if data_root else {}
            invocation = run_local(context, command, env, self.env)
        elif self.kind == LauncherKind.k8s:
            client, core_api, namespace = self._k8s_clients()
            launch_id = new_launch_id(context.run.run_id, name)
            plan = self.k8s_plan(
                script, launch_id=launch_id, namespace=namespace, image=run_image(context)
            )
            command = plan.rank0_spec["containers"][0]["command"]
            invocation = run_k8s(
                context,
                plan,
                client,
                core_api,
                topology=self.k8s_topology(),
                pod_wait_timeout_s=self.pod_wait_timeout_s,
                keep_pods=self.keep_pods,
            )
        else:
            raise ValueError("launch() needs kind 'local' or 'k8s'; inprocess runs run_stage only")
        return self._stage_run(name, invocation, command)

    # -- commands and specs (pure: tests check these without running anything) ---------------
    def local_command(self, script: Sequence[str]) -> list[str]:
        return local_command(
            script,
            python=self.python or sys.executable,
            config_file=self.accelerate_config,
            num_processes=self.num_processes,
            main_process_port=self.main_process_port or free_port(),
            mixed_precision=self._precision(),
        )

    def local_processes(self) -> int:
        """How many processes a local launch starts: the field, else the accelerate config's."""
        return local_processes(self.num_processes, self.accelerate_config)

    def k8s_topology(self) -> K8sTopology:
        return K8sTopology(
            num_machines=self.num_machines,
            gpus_per_pod=self.gpus_per_pod,
            port=self.main_process_port or DEFAULT_RDZV_PORT,
            accelerate_config=self.accelerate_config,
            mixed_precision=self._precision(),
        )

    def k8s_command(
        self, script: Sequence[str], *, machine_rank: int, main_process_ip: str | None
    ) -> list[str]:
        return self.k8s_topology().command(
            script, machine_rank=machine_rank, main_process_ip=main_process_ip
        )

    def pod_settings(self, image: str | None = None) -> PodSettings:
        image = self.image or image
        if not image:
            raise ValueError(
                "LauncherResource(kind='k8s') needs an image: set `image`, or run from a code "
                "location that has one (the Helm user deployment does)"
            )
        return PodSettings(
            image=image,
            image_pull_policy=self.image_pull_policy,
            service_account=self.service_account,
            data_pvc=self.data_pvc,
            data_mount_path=self.data_mount_path,
            gpus_per_pod=self.gpus_per_pod,
            node_selector=self.node_selector,
            tolerations=self.tolerations,
            env=self.env,
            cpu_request=self.cpu_request,
            memory_request=self.memory_request,
            shm_size=self.shm_size,
        )

    def k8s_plan(
        self,
        script: Sequence[str],
        *,
        launch_id: str,
        namespace: str | None = None,
        image: str | None = None,
    ) -> K8sLaunchPlan:
        """Pod spec of rank 0 (run by ``PipesK8sClient``), worker pods and rendezvous service.

        ``image`` is the fallback when the resource sets none (the run's code location image).
        """
        return plan_launch(
            script,
            self.k8s_topology(),
            self.pod_settings(image),
            launch_id=launch_id,
            namespace=namespace or self.namespace or "default",
        )

    def run_tags(self, pool: str = "a100") -> dict[str, str]:
        """``training_run_tags`` with this launcher's GPU count, node selector, tolerations."""
        return training_run_tags(
            pool,
            gpus=self.gpus_per_pod,
            node_selector=self.node_selector,
            tolerations=self.tolerations,
        )

    def _precision(self) -> str | None:
        return self.mixed_precision.value if self.mixed_precision else None

    # -- execution ------------------------------------------------------------------------------
    def _stage_run(
        self, name: str, invocation: dg.PipesClientCompletedInvocation, command: Sequence[str]
    ) -> StageRun:
        summary: dict[str, Any] = {}
        for message in invocation.get_custom_messages():
            if isinstance(message, dict) and SUMMARY_MESSAGE_KEY in message:
                summary = message[SUMMARY_MESSAGE_KEY]
        metadata = dagster_metadata(summary)
        for result in invocation.get_results(implicit_materializations=False):
            if isinstance(result, dg.MaterializeResult) and result.metadata:
                metadata.update(result.metadata)
        processes = (
            self.gpus_per_pod * self.num_machines
            if self.kind == LauncherKind.k8s
            else self.local_processes()
        )
        metadata.update(
            {
                "launcher": self.kind.value,
                "launch_command": dg.MetadataValue.text(" ".join(command)),
                "launch_processes": processes,
            }
        )
        return StageRun(name, summary, metadata)

    def _k8s_clients(self) -> tuple[Any, Any, str]:
        """(PipesK8sClient, CoreV1Api, namespace); a seam tests replace with fakes."""
        return k8s_clients(self.namespace)
