"""Where a training stage runs: in the asset's process, under local ``accelerate launch``, or in
GPU pods on Kubernetes; the asset code is the same for all three.

An asset asks ``launcher.run_stage(context, "teacher", params=params, data=data)`` and gets a
``StageRun`` (the stage's summary dict and the metadata to attach). Which of the three happens
is resource configuration, so a laptop run (``inprocess``), a 2-process CPU smoke test of the
distributed path (``local``) and the 8xA100 paper run (``k8s``) use one asset graph:

- ``inprocess``: call the stage function directly, as ``llcm stage`` does.
- ``local``: ``accelerate launch`` of ``python -m pipeline.pipes_entry STAGE ...`` through Dagster
  Pipes; rank 0 streams logs and reports the summary and materialisation metadata back.
- ``k8s``: the same command in one pod per machine, rank 0 through ``PipesK8sClient``, worker
  ranks as plain pods that find rank 0 through a headless Service (see ``pipeline.k8s_spec``).

A failed launch raises ``dagster.Failure`` with the last lines of the launch's stderr (local) or
of the rank-0 pod's log (k8s), so the failed materialisation says why.

Training entrypoints that are not stages (``ops.training.*``) go through ``launch(context,
["-m", "ops.training.entry", "teacher", ...])``: any script accelerate can run, with the same Pipes wiring.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import dagster as dg
import yaml

from ops.config import REPO_ROOT
from pipeline.k8s_spec import (
    DEFAULT_RDZV_PORT,
    GPU_RESOURCE,
    LAUNCH_LABEL,
    RANK_LABEL,
    PodSettings,
    build_pod_manifest,
    build_pod_spec,
    build_rendezvous_service,
    launch_labels,
    rendezvous_host,
    rendezvous_service_name,
)
from pipeline.local_pipes import probable_cause
from pipeline.pipes_entry import SUMMARY_MESSAGE_KEY, resolve_stage, summary_metadata
from pipeline.resources import DataResource, ParamsResource


class LauncherKind(StrEnum):
    """Where a stage runs (member names are what run config and the launchpad show)."""

    inprocess = "inprocess"
    local = "local"
    k8s = "k8s"


class MixedPrecision(StrEnum):
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


#: Run tag that the run coordinator (deployment/dagster.yaml) limits per GPU node pool.
GPU_POOL_TAG = "llcm/gpu-pool"
SINGLE_NODE_CONFIG = "deployment/accelerate/8xA100-bf16.yaml"
MULTI_NODE_CONFIG = "deployment/accelerate/multinode-2x8xA100-bf16.yaml"
CPU_CONFIG = "deployment/accelerate/cpu-2proc.yaml"
LOG_TAIL_LINES = 50
ENV_PREFIX = "LLCM_LAUNCHER_"
#: Fields read from the environment verbatim (YAML would turn "no" into False, "8" into 8).
_STR_FIELDS = frozenset(
    {"kind", "mixed_precision", "accelerate_config", "python", "namespace", "image"}
    | {"image_pull_policy", "service_account", "data_pvc", "data_mount_path"}
    | {"cpu_request", "memory_request", "shm_size"}
)


@dataclass(frozen=True)
class StageRun:
    """What a stage returned, wherever it ran."""

    stage: str
    summary: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    def materialize_result(self, metadata: Mapping[str, Any] | None = None) -> dg.MaterializeResult:
        """The asset's result: the stage's metadata plus the asset's own (which wins)."""
        return dg.MaterializeResult(metadata={**self.metadata, **(metadata or {})})


def dagster_metadata(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The same metadata rank 0 reports through Pipes, built in the asset's own process."""
    out: dict[str, Any] = {}
    for key, value in summary_metadata(summary).items():
        if isinstance(value, dict) and value.get("type") == "path":
            out[key] = dg.MetadataValue.path(value["raw_value"])
        elif isinstance(value, dict) and value.get("type") == "json":
            out[key] = dg.MetadataValue.json(value["raw_value"])
        elif value is None:
            out[key] = dg.MetadataValue.null()
        else:
            out[key] = value
    return out


def stage_script(
    stage: str,
    *,
    data_root: str,
    params_path: str | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``accelerate launch`` script part for one stage: ``-m pipeline.pipes_entry ...``."""
    script = ["-m", "pipeline.pipes_entry", stage, "--data", data_root]
    if params_path:
        script += ["--params", params_path]
    if preset:
        script += ["--preset", preset]
    for text in overrides:
        script += ["--set", text]
    return script + list(extra_args)


def accelerate_command(
    script: Sequence[str],
    *,
    python: str = "python",
    config_file: str | None = None,
    num_processes: int | None = None,
    num_machines: int = 1,
    machine_rank: int | None = None,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
    mixed_precision: str | None = None,
) -> list[str]:
    """``python -m accelerate.commands.launch [options] SCRIPT...``.

    ``num_processes`` is the total over all machines, as accelerate counts it. Without a config
    file, more than one process means ``--multi_gpu``: it is the launcher that starts one process
    per rank (with ``Accelerator(cpu=True)`` they use gloo); ``--cpu --num_processes 2``
    silently runs a single process.
    """
    cmd = [python, "-m", "accelerate.commands.launch"]
    if config_file:
        cmd += ["--config_file", config_file]
    elif num_processes and num_processes > 1:
        cmd += ["--multi_gpu"]
    if num_processes:
        cmd += ["--num_processes", str(num_processes)]
    if config_file or num_machines > 1:
        cmd += ["--num_machines", str(num_machines)]
    if machine_rank is not None:
        cmd += ["--machine_rank", str(machine_rank)]
    if main_process_ip:
        cmd += ["--main_process_ip", main_process_ip]
    if main_process_port:
        cmd += ["--main_process_port", str(main_process_port)]
    if mixed_precision:
        cmd += ["--mixed_precision", mixed_precision]
    return cmd + list(script)


@dataclass(frozen=True)
class K8sLaunchPlan:
    """The objects of one Kubernetes launch, as data (see ``LauncherResource.k8s_plan``)."""

    launch_id: str
    namespace: str
    rank0_meta: dict[str, Any]
    rank0_spec: dict[str, Any]
    workers: list[dict[str, Any]]
    service: dict[str, Any] | None

    @property
    def label_selector(self) -> str:
        return f"{LAUNCH_LABEL}={self.launch_id}"


def new_launch_id(run_id: str, stage: str) -> str:
    """A DNS-safe id, unique per launch, that names and labels its pods and service."""
    clean = re.sub("[^a-z0-9-]", "", stage.split(":")[-1].lower().replace("_", "-"))[:16]
    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
    return f"llcm-{run_id[:8]}-{clean}-{suffix}".replace("--", "-")


def free_port() -> int:
    """A free TCP port for the local rendezvous, so concurrent launches do not collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def training_run_tags(
    pool: str = "a100",
    *,
    gpus: int = 8,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, str]] = (),
) -> dict[str, str]:
    """Tags for a training job: the GPU-pool tag the run coordinator limits, and a
    ``dagster-k8s/config`` that gives the run pod itself the GPUs.

    The second matters when the launcher is ``local`` inside a K8sRunLauncher run pod (the run
    pod trains); with the ``k8s`` launcher the run pod only orchestrates and the tag is harmless.
    """
    k8s_config = {
        "container_config": {
            "resources": {
                "requests": {GPU_RESOURCE: str(gpus)},
                "limits": {GPU_RESOURCE: str(gpus)},
            }
        },
        "pod_spec_config": {
            "node_selector": dict(node_selector or {}),
            "tolerations": [dict(t) for t in tolerations],
        },
    }
    return {GPU_POOL_TAG: pool, "dagster-k8s/config": json.dumps(k8s_config)}


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
            if extra_args:
                raise ValueError("extra_args need a launched process (kind local or k8s)")
            summary = resolve_stage(stage)(params.load(), data.layout) or {}
            return StageRun(
                stage, dict(summary), {**dagster_metadata(summary), "launcher": self.kind.value}
            )
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
            invocation = self._run_local(context, command, env)
        elif self.kind == LauncherKind.k8s:
            client, core_api, namespace = self._k8s_clients()
            launch_id = new_launch_id(context.run.run_id, name)
            plan = self.k8s_plan(
                script, launch_id=launch_id, namespace=namespace, image=_run_image(context)
            )
            command = plan.rank0_spec["containers"][0]["command"]
            invocation = self._run_k8s(context, plan, client, core_api)
        else:
            raise ValueError("launch() needs kind 'local' or 'k8s'; inprocess runs run_stage only")
        return self._stage_run(name, invocation, command)

    # -- commands and specs (pure: tests check these without running anything) ---------------
    def local_command(self, script: Sequence[str]) -> list[str]:
        return accelerate_command(
            script,
            python=self.python or sys.executable,
            config_file=self.accelerate_config,
            num_processes=self.num_processes,
            main_process_port=self.main_process_port or free_port(),
            mixed_precision=self.mixed_precision.value if self.mixed_precision else None,
        )

    def local_processes(self) -> int:
        """How many processes a local launch starts: the field, else the accelerate config's."""
        if self.num_processes:
            return self.num_processes
        if self.accelerate_config:
            path = REPO_ROOT / self.accelerate_config
            config = yaml.safe_load(path.read_text()) if path.is_file() else {}
            return int((config or {}).get("num_processes") or 1)
        return 1

    def k8s_command(
        self, script: Sequence[str], *, machine_rank: int, main_process_ip: str | None
    ) -> list[str]:
        config = self.accelerate_config or (
            SINGLE_NODE_CONFIG if self.num_machines == 1 else MULTI_NODE_CONFIG
        )
        multi = self.num_machines > 1
        return accelerate_command(
            script,
            config_file=config,
            num_processes=self.gpus_per_pod * self.num_machines,
            num_machines=self.num_machines,
            machine_rank=machine_rank if multi else None,
            main_process_ip=main_process_ip if multi else None,
            main_process_port=self.main_process_port or DEFAULT_RDZV_PORT,
            mixed_precision=self.mixed_precision.value if self.mixed_precision else None,
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
        namespace = namespace or self.namespace or "default"
        settings = self.pod_settings(image)
        port = self.main_process_port or DEFAULT_RDZV_PORT
        multi = self.num_machines > 1
        host = rendezvous_host(launch_id, namespace) if multi else None
        rank0_cmd = self.k8s_command(script, machine_rank=0, main_process_ip=host)
        workers = [
            build_pod_manifest(
                settings,
                self.k8s_command(script, machine_rank=rank, main_process_ip=host),
                name=f"{launch_id}-rank{rank}",
                labels=launch_labels(launch_id, rank),
            )
            for rank in range(1, self.num_machines)
        ]
        return K8sLaunchPlan(
            launch_id=launch_id,
            namespace=namespace,
            rank0_meta={"labels": launch_labels(launch_id, 0)},
            rank0_spec=build_pod_spec(settings, rank0_cmd, ports=[port] if multi else []),
            workers=workers,
            service=build_rendezvous_service(launch_id, port) if multi else None,
        )

    def run_tags(self, pool: str = "a100") -> dict[str, str]:
        """``training_run_tags`` with this launcher's GPU count, node selector, tolerations."""
        return training_run_tags(
            pool,
            gpus=self.gpus_per_pod,
            node_selector=self.node_selector,
            tolerations=self.tolerations,
        )

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

    def _run_local(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        command: list[str],
        env: Mapping[str, str],
    ) -> dg.PipesClientCompletedInvocation:
        from pipeline.local_pipes import TailingPipesSubprocessClient

        context.log.info(f"launching: {' '.join(command)}")
        # The repo first (ranks import pipeline.pipes_entry), then whatever the caller added.
        extra = [self.env.get("PYTHONPATH"), os.environ.get("PYTHONPATH")]
        pythonpath = os.pathsep.join([str(REPO_ROOT), *(p for p in extra if p)])
        client = TailingPipesSubprocessClient(
            env={**self.env, **env, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"},
            cwd=str(REPO_ROOT),
        )
        return client.run(context=context, command=command)

    def _k8s_clients(self) -> tuple[Any, Any, str]:
        """(PipesK8sClient, CoreV1Api, namespace); a seam tests replace with fakes."""
        import kubernetes
        from dagster_k8s import PipesK8sClient
        from dagster_k8s.utils import detect_current_namespace

        client = PipesK8sClient(poll_interval=10.0)
        client._load_k8s_config()  # same config the client will use for the rank-0 pod
        namespace = self.namespace or detect_current_namespace(None) or "default"
        return client, kubernetes.client.CoreV1Api(), namespace

    def _run_k8s(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        plan: K8sLaunchPlan,
        client: Any,
        core_api: Any,
    ) -> dg.PipesClientCompletedInvocation:
        """Service and worker pods first (they wait for rank 0), then rank 0 through Pipes;
        every object of the launch is deleted afterwards, whatever happened."""
        namespace = plan.namespace
        context.log.info(
            f"launching {self.num_machines} pod(s) x {self.gpus_per_pod} GPUs in {namespace}: "
            f"{' '.join(plan.rank0_spec['containers'][0]['command'])}"
        )
        try:
            if plan.service is not None:
                core_api.create_namespaced_service(namespace, plan.service)
            for worker in plan.workers:
                core_api.create_namespaced_pod(namespace, worker)
            try:
                return client.run(
                    context=context,
                    namespace=namespace,
                    base_pod_meta=plan.rank0_meta,
                    base_pod_spec=plan.rank0_spec,
                    pod_wait_timeout=self.pod_wait_timeout_s,
                    delete_pod_on_completion=False,
                )
            except Exception as exc:
                tail = _k8s_log_tail(core_api, namespace, plan)
                cause = probable_cause(tail)
                raise dg.Failure(
                    description=(
                        f"training launch {plan.launch_id} failed: {cause or exc}\n"
                        f"({exc})\n"
                        f"--- last {LOG_TAIL_LINES} log lines ---\n{tail}"
                    ),
                    metadata={"launch_id": plan.launch_id, "log_tail": dg.MetadataValue.text(tail)},
                ) from exc
        finally:
            if not self.keep_pods:
                _k8s_cleanup(core_api, namespace, plan, context.log)


def _run_image(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> str | None:
    """The container image of the run's code location, if it was loaded from one."""
    origin = getattr(context.run, "job_code_origin", None)
    repository = getattr(origin, "repository_origin", None)
    return getattr(repository, "container_image", None)


def _k8s_log_tail(core_api: Any, namespace: str, plan: K8sLaunchPlan) -> str:
    """Last log lines of the rank-0 pod and of every worker pod that failed."""
    parts: list[str] = []
    try:
        pods = core_api.list_namespaced_pod(namespace, label_selector=plan.label_selector).items
    except Exception as exc:  # the API itself may be what failed
        return f"(could not list pods: {exc})"
    for pod in sorted(pods, key=lambda p: int(p.metadata.labels.get(RANK_LABEL, "0"))):
        rank = pod.metadata.labels.get(RANK_LABEL, "?")
        phase = getattr(pod.status, "phase", None)
        if rank != "0" and phase != "Failed":
            continue
        try:
            text = core_api.read_namespaced_pod_log(
                pod.metadata.name, namespace, tail_lines=LOG_TAIL_LINES
            )
        except Exception as exc:
            text = f"(no log: {exc})"
        parts.append(f"[machine rank {rank}, pod {pod.metadata.name}, phase {phase}]\n{text}")
    return "\n".join(parts) or "(no pods found)"


def _k8s_cleanup(core_api: Any, namespace: str, plan: K8sLaunchPlan, log: Any) -> None:
    """Delete every pod of the launch (rank 0 included) and the rendezvous service.

    Best effort: a failed delete is logged, never raised, so it cannot hide the launch's own
    error; leftovers carry the ``llcm.io/launch`` label for a manual ``kubectl delete``.
    """
    deletions = [
        (
            "pods",
            lambda: core_api.delete_collection_namespaced_pod(
                namespace, label_selector=plan.label_selector
            ),
        )
    ]
    if plan.service is not None:
        name = rendezvous_service_name(plan.launch_id)
        deletions.append(("service", lambda: core_api.delete_namespaced_service(name, namespace)))
    for what, delete in deletions:
        try:
            delete()
        except Exception as exc:
            log.warning(f"could not delete {what} of launch {plan.launch_id}: {exc}")
