"""The ``k8s`` launcher: one pod per machine, each running ``accelerate launch``.

Rank 0 runs through ``PipesK8sClient`` (it streams logs and reports back); worker ranks are plain
pods that find rank 0 through a headless Service (pod and service specs: ``k8s_spec``). Every
object of a launch carries the ``llcm.io/launch`` label and is deleted afterwards.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from pipeline.launcher.commands import LOG_TAIL_LINES, accelerate_command
from pipeline.launcher.k8s_spec import (
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
from pipeline.launcher.local_pipes import probable_cause

#: Run tag that the run coordinator (deployment/dagster.yaml) limits per GPU node pool.
GPU_POOL_TAG = "llcm/gpu-pool"
SINGLE_NODE_CONFIG = "deployment/accelerate/8xA100-bf16.yaml"
MULTI_NODE_CONFIG = "deployment/accelerate/multinode-2x8xA100-bf16.yaml"


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


@dataclass(frozen=True)
class K8sTopology:
    """How many machines and GPUs a launch spans, and the accelerate settings of each pod."""

    num_machines: int
    gpus_per_pod: int
    port: int
    accelerate_config: str | None = None
    mixed_precision: str | None = None

    def command(
        self, script: Sequence[str], *, machine_rank: int, main_process_ip: str | None
    ) -> list[str]:
        """The ``accelerate launch`` argv of one pod (machine rank and rank-0 host for several)."""
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
            main_process_port=self.port,
            mixed_precision=self.mixed_precision,
        )


def plan_launch(
    script: Sequence[str],
    topology: K8sTopology,
    settings: PodSettings,
    *,
    launch_id: str,
    namespace: str,
) -> K8sLaunchPlan:
    """Pod spec of rank 0 (run by ``PipesK8sClient``), worker pods and rendezvous service."""
    multi = topology.num_machines > 1
    host = rendezvous_host(launch_id, namespace) if multi else None
    rank0_cmd = topology.command(script, machine_rank=0, main_process_ip=host)
    workers = [
        build_pod_manifest(
            settings,
            topology.command(script, machine_rank=rank, main_process_ip=host),
            name=f"{launch_id}-rank{rank}",
            labels=launch_labels(launch_id, rank),
        )
        for rank in range(1, topology.num_machines)
    ]
    return K8sLaunchPlan(
        launch_id=launch_id,
        namespace=namespace,
        rank0_meta={"labels": launch_labels(launch_id, 0)},
        rank0_spec=build_pod_spec(settings, rank0_cmd, ports=[topology.port] if multi else []),
        workers=workers,
        service=build_rendezvous_service(launch_id, topology.port) if multi else None,
    )


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


def k8s_clients(namespace: str | None) -> tuple[Any, Any, str]:
    """(PipesK8sClient, CoreV1Api, namespace) from the in-cluster or kube config."""
    import kubernetes
    from dagster_k8s import PipesK8sClient
    from dagster_k8s.utils import detect_current_namespace

    client = PipesK8sClient(poll_interval=10.0)
    client._load_k8s_config()  # same config the client will use for the rank-0 pod
    namespace = namespace or detect_current_namespace(None) or "default"
    return client, kubernetes.client.CoreV1Api(), namespace


def run_k8s(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    plan: K8sLaunchPlan,
    client: Any,
    core_api: Any,
    *,
    topology: K8sTopology,
    pod_wait_timeout_s: float,
    keep_pods: bool,
) -> dg.PipesClientCompletedInvocation:
    """Service and worker pods first (they wait for rank 0), then rank 0 through Pipes;
    every object of the launch is deleted afterwards, whatever happened."""
    namespace = plan.namespace
    context.log.info(
        f"launching {topology.num_machines} pod(s) x {topology.gpus_per_pod} GPUs in "
        f"{namespace}: {' '.join(plan.rank0_spec['containers'][0]['command'])}"
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
                pod_wait_timeout=pod_wait_timeout_s,
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
        if not keep_pods:
            _k8s_cleanup(core_api, namespace, plan, context.log)


def run_image(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> str | None:
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
