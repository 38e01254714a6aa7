"""Kubernetes manifests for a training launch, as plain data.

Pure functions, no cluster and no kubernetes client needed, so tests can check the pods a
launch would create field by field. ``LauncherResource`` hands these to ``PipesK8sClient``
(rank 0, which reports to Dagster) and to the Kubernetes API (worker ranks, rendezvous service).

A launch on ``num_machines`` nodes is one pod per machine, each running ``accelerate launch``
with its ``--machine_rank``; workers reach rank 0 through a headless Service that selects only
the rank-0 pod, so ``--main_process_ip`` is a stable DNS name known before any pod starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
#: Labels shared by every object of one launch; ``LAUNCH_LABEL`` ties them together.
APP_LABEL = "app.kubernetes.io/name"
LAUNCH_LABEL = "llcm.io/launch"
RANK_LABEL = "llcm.io/machine-rank"
TRAINER_CONTAINER = "trainer"
DEFAULT_RDZV_PORT = 29500


@dataclass(frozen=True)
class PodSettings:
    """Everything about a training pod that does not depend on the command it runs."""

    image: str
    image_pull_policy: str = "IfNotPresent"
    service_account: str | None = None
    data_pvc: str = "llcm-data"
    data_mount_path: str = "/data"
    gpus_per_pod: int = 8
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, str]] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cpu_request: str | None = None
    memory_request: str | None = None
    shm_size: str = "64Gi"
    working_dir: str = "/app"


def launch_labels(launch_id: str, rank: int) -> dict[str, str]:
    return {APP_LABEL: "llcm-trainer", LAUNCH_LABEL: launch_id, RANK_LABEL: str(rank)}


def rendezvous_service_name(launch_id: str) -> str:
    return f"{launch_id}-rdzv"[:63]


def rendezvous_host(launch_id: str, namespace: str) -> str:
    """The DNS name of the rank-0 pod, through the headless rendezvous service."""
    return f"{rendezvous_service_name(launch_id)}.{namespace}.svc.cluster.local"


def build_pod_spec(
    settings: PodSettings,
    command: Sequence[str],
    *,
    ports: Sequence[int] = (),
) -> dict[str, Any]:
    """The ``PodSpec`` (camelCase, as in a manifest) of one training pod.

    The pod holds ``gpus_per_pod`` GPUs (request = limit, as the device plugin requires), lands
    on the GPU pool through the node selector and tolerations, mounts the shared data volume at
    ``data_mount_path`` with ``LLCM_DATA`` pointing there, and gets a memory-backed ``/dev/shm``
    (the container default of 64 MiB starves NCCL and DataLoader workers).
    """
    env = {
        "LLCM_DATA": settings.data_mount_path,
        # Pretrained weights are downloaded once onto the shared volume, not per pod.
        "HF_HOME": f"{settings.data_mount_path}/hf_home",
        "PYTHONUNBUFFERED": "1",
        **settings.env,
    }
    requests: dict[str, str] = {GPU_RESOURCE: str(settings.gpus_per_pod)}
    if settings.cpu_request:
        requests["cpu"] = settings.cpu_request
    if settings.memory_request:
        requests["memory"] = settings.memory_request
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(command),
        "workingDir": settings.working_dir,
        "env": [{"name": k, "value": str(v)} for k, v in env.items()],
        "resources": {
            "requests": requests,
            "limits": {GPU_RESOURCE: str(settings.gpus_per_pod)},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": settings.data_mount_path},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    if ports:
        container["ports"] = [{"containerPort": p, "protocol": "TCP"} for p in ports]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": settings.data_pvc}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
        ],
    }
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        spec["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    return spec


def build_pod_manifest(
    settings: PodSettings,
    command: Sequence[str],
    *,
    name: str,
    labels: Mapping[str, str],
    ports: Sequence[int] = (),
) -> dict[str, Any]:
    """A complete ``Pod`` manifest (what worker ranks are created from)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": build_pod_spec(settings, command, ports=ports),
    }


def build_rendezvous_service(launch_id: str, port: int = DEFAULT_RDZV_PORT) -> dict[str, Any]:
    """Headless Service whose DNS name resolves to the rank-0 pod.

    ``publishNotReadyAddresses`` makes the name resolve while the pod is still starting, which is
    exactly when the workers look for it.
    """
    selector = {LAUNCH_LABEL: launch_id, RANK_LABEL: "0"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": rendezvous_service_name(launch_id),
            "labels": {APP_LABEL: "llcm-trainer", LAUNCH_LABEL: launch_id},
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector,
            "ports": [{"name": "rendezvous", "port": port, "targetPort": port}],
        },
    }
