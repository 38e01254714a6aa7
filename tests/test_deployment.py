"""deployment/: every file is checked by the schema of the tool that will read it.

The instance and workspace yaml go through Dagster's own validation (and each configured class
through its own config schema), the accelerate configs through accelerate's config class, the
Helm values against the keys of the Dagster chart. Cross-file checks keep the data volume, the
GPU-pool tag and the launcher settings saying the same thing everywhere.
"""

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.launcher import (
    CPU_CONFIG,
    GPU_POOL_TAG,
    MULTI_NODE_CONFIG,
    SINGLE_NODE_CONFIG,
    LauncherResource,
)

REPO = Path(__file__).resolve().parent.parent
DEPLOYMENT = REPO / "deployment"

pytestmark = pytest.mark.filterwarnings("ignore:Found version mismatch:UserWarning")


def _yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


# -- dagster.yaml ---------------------------------------------------------------------------
def test_instance_yaml_passes_dagsters_instance_schema() -> None:
    from dagster._core.instance.config import dagster_instance_config

    config, custom_instance_class = dagster_instance_config(str(DEPLOYMENT))
    assert custom_instance_class is None
    assert set(config["storage"]) == {"postgres"}
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


@pytest.mark.parametrize("section", ["run_launcher", "run_coordinator", "compute_logs"])
def test_each_configured_class_imports_and_accepts_its_config(section: str) -> None:
    """The instance schema only checks {module, class, config}; the class checks the rest."""
    from dagster._config import validate_config
    from dagster._serdes import class_from_code_pointer

    entry = _yaml(DEPLOYMENT / "dagster.yaml")[section]
    cls = class_from_code_pointer(entry["module"], entry["class"])
    result = validate_config(cls.config_type(), entry["config"])
    assert result.success, [error.message for error in result.errors]


def test_instance_limits_one_training_run_per_gpu_pool_and_mounts_the_data_volume() -> None:
    instance = _yaml(DEPLOYMENT / "dagster.yaml")
    limits = instance["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert {"key": GPU_POOL_TAG, "value": "a100", "limit": 1} in limits

    launcher = instance["run_launcher"]["config"]
    defaults = LauncherResource()
    (volume,) = launcher["volumes"]
    (mount,) = launcher["volume_mounts"]
    assert volume["persistentVolumeClaim"]["claimName"] == defaults.data_pvc
    assert mount == {"name": volume["name"], "mount_path": defaults.data_mount_path}
    assert f"LLCM_DATA={defaults.data_mount_path}" in launcher["env_vars"]
    assert instance["compute_logs"]["config"]["base_dir"].startswith(defaults.data_mount_path)


# -- workspace.yaml -------------------------------------------------------------------------
def test_workspace_yaml_passes_dagsters_workspace_schema() -> None:
    from dagster._core.workspace.config_schema import ensure_workspace_config

    path = DEPLOYMENT / "workspace.yaml"
    config = ensure_workspace_config(_yaml(path), str(path))
    (location,) = config["load_from"]
    target = location["python_module"]
    assert target["location_name"] == "llcm"
    # Relative paths in a workspace file are relative to the file itself.
    assert (path.parent / target["working_directory"]).resolve() == REPO
    assert importlib.util.find_spec(target["module_name"]) is not None


# -- accelerate configs ---------------------------------------------------------------------
def _accelerate(name: str) -> Any:
    from accelerate.commands.config.config_args import ClusterConfig

    return ClusterConfig.from_yaml_file(str(REPO / name))


def test_single_node_accelerate_config_is_8_bf16_processes_on_one_machine() -> None:
    config = _accelerate(SINGLE_NODE_CONFIG)
    assert config.distributed_type.value == "MULTI_GPU"
    assert (config.num_processes, config.num_machines) == (8, 1)
    assert config.mixed_precision == "bf16"


def test_multi_node_accelerate_config_counts_all_16_ranks_on_2_machines() -> None:
    config = _accelerate(MULTI_NODE_CONFIG)
    assert (config.num_processes, config.num_machines) == (16, 2)
    assert config.num_processes // config.num_machines == 8
    assert config.mixed_precision == "bf16" and config.main_process_port == 29500


def test_cpu_accelerate_config_starts_two_ranks() -> None:
    """MULTI_GPU, not --cpu/MULTI_CPU: the latter silently runs one process without MPI."""
    config = _accelerate(CPU_CONFIG)
    assert config.distributed_type.value == "MULTI_GPU"
    assert config.num_processes == 2 and config.use_cpu is False
    assert config.mixed_precision == "no"


# -- Helm values ----------------------------------------------------------------------------
# Keys of the Dagster chart's values.schema.json (helm/dagster in dagster-io/dagster) for the
# sections set here; sections marked strict there reject unknown keys, so a typo would fail
# `helm install` with a schema error. Kept as data so this test needs no network or helm.
CHART_KEYS: dict[str, set[str]] = {
    "": {
        "dagsterWebserver", "dagster-user-deployments", "postgresql",
        "generatePostgresqlPasswordSecret", "generateCeleryConfigSecret", "rabbitmq", "redis",
        "flower", "ingress", "imagePullSecrets", "computeLogManager", "scheduler",
        "runLauncher", "pythonLogs", "dagsterDaemon", "busybox", "migrate", "telemetry",
        "serviceAccount", "global", "retention", "additionalInstanceConfig",
    },
    "global": {"postgresqlSecretName", "dagsterHome", "serviceAccountName", "celeryConfigSecretName"},
    "serviceAccount": {"create", "name", "annotations"},
    "dagster-user-deployments": {"enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    "deployment": {
        "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
        "deploymentNamespace", "port", "env", "envConfigMaps", "envSecrets", "annotations",
        "nodeSelector", "affinity", "tolerations", "podSecurityContext", "securityContext",
        "resources", "livenessProbe", "readinessProbe", "startupProbe", "labels",
        "volumeMounts", "volumes", "schedulerName", "initContainers", "sidecarContainers",
    },
    "runLauncher": {"type", "config"},
    "k8sRunLauncher": {
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
        "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
        "failPodOnRunFailure", "resources", "schedulerName", "securityContext", "runK8sConfig",
    },
    "runK8sConfig": {
        "containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig",
        "jobMetadata",
    },
    "runCoordinator": {"enabled", "type", "config"},
    "queuedRunCoordinator": {
        "maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds",
        "dequeueNumWorkers", "dequeueUseThreads", "blockOpConcurrencyLimitedRuns",
    },
    "computeLogManager": {"type", "config"},
    "postgresql": {
        "image", "enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword",
        "postgresqlDatabase", "postgresqlParams", "postgresqlScheme", "service",
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def helm() -> dict[str, Any]:
    return _yaml(DEPLOYMENT / "helm" / "values.yaml")


def test_helm_values_use_only_keys_the_dagster_chart_knows(helm: dict[str, Any]) -> None:
    (deployment,) = helm["dagster-user-deployments"]["deployments"]
    k8s = helm["runLauncher"]["config"]["k8sRunLauncher"]
    coordinator = helm["dagsterDaemon"]["runCoordinator"]
    sections = {
        "": helm,
        "global": helm["global"],
        "serviceAccount": helm["serviceAccount"],
        "dagster-user-deployments": helm["dagster-user-deployments"],
        "deployment": deployment,
        "runLauncher": helm["runLauncher"],
        "k8sRunLauncher": k8s,
        "runK8sConfig": k8s["runK8sConfig"],
        "runCoordinator": coordinator,
        "queuedRunCoordinator": coordinator["config"]["queuedRunCoordinator"],
        "computeLogManager": helm["computeLogManager"],
        "postgresql": helm["postgresql"],
    }
    for name, values in sections.items():
        unknown = set(values) - CHART_KEYS[name]
        assert not unknown, f"{name or 'top level'}: keys the chart does not know: {unknown}"


def test_helm_user_deployment_serves_the_code_location_from_the_image(
    helm: dict[str, Any],
) -> None:
    (deployment,) = helm["dagster-user-deployments"]["deployments"]
    assert helm["dagster-user-deployments"]["enabled"] is True
    assert deployment["image"]["repository"] and deployment["image"]["tag"] != "latest"
    assert deployment["image"]["pullPolicy"] in {"Always", "IfNotPresent", "Never"}
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == "pipeline.definitions"
    assert isinstance(deployment["port"], int)
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True


def test_helm_run_launcher_is_k8s_with_the_shared_data_volume(helm: dict[str, Any]) -> None:
    assert helm["runLauncher"]["type"] == "K8sRunLauncher"
    k8s = helm["runLauncher"]["config"]["k8sRunLauncher"]
    # What the chart requires of a K8sRunLauncher config once merged with its defaults.
    for key in ("imagePullPolicy", "loadInclusterConfig", "envConfigMaps", "envSecrets"):
        assert key in k8s
    (volume,) = k8s["volumes"]
    (mount,) = k8s["volumeMounts"]
    instance = _yaml(DEPLOYMENT / "dagster.yaml")["run_launcher"]["config"]
    assert volume == instance["volumes"][0]  # Helm and plain-yaml installs agree
    assert mount["mountPath"] == instance["volume_mounts"][0]["mount_path"]
    limits = helm["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert {"key": GPU_POOL_TAG, "value": "a100", "limit": 1} in limits["tagConcurrencyLimits"]


def test_helm_compute_log_manager_class_accepts_its_config(helm: dict[str, Any]) -> None:
    from dagster._config import validate_config
    from dagster._serdes import class_from_code_pointer

    manager = helm["computeLogManager"]
    assert manager["type"] == "CustomComputeLogManager"
    custom = manager["config"]["customComputeLogManager"]
    cls = class_from_code_pointer(custom["module"], custom["class"])
    assert validate_config(cls.config_type(), custom["config"]).success


def test_helm_env_configures_an_8xa100_k8s_launcher(helm: dict[str, Any]) -> None:
    """The LLCM_LAUNCHER_* env of the user deployment must build a valid launcher."""
    (deployment,) = helm["dagster-user-deployments"]["deployments"]
    env = {item["name"]: item["value"] for item in deployment["env"]}
    launcher = LauncherResource.from_env(env)
    assert launcher.kind == "k8s" and launcher.gpus_per_pod == 8
    assert launcher.tolerations and launcher.tolerations[0]["key"] == "nvidia.com/gpu"
    assert "nvidia.com/gpu.product" in launcher.node_selector
    k8s_volume = helm["runLauncher"]["config"]["k8sRunLauncher"]["volumes"][0]
    assert launcher.data_pvc == k8s_volume["persistentVolumeClaim"]["claimName"]
    assert env["LLCM_DATA"] == launcher.data_mount_path


# -- Dockerfile -----------------------------------------------------------------------------
def test_dockerfile_installs_torch_first_then_the_lock_then_the_project() -> None:
    text = (DEPLOYMENT / "Dockerfile").read_text()
    runs = [line for line in text.splitlines() if line.startswith(("RUN", "COPY"))]
    torch_at = next(i for i, line in enumerate(runs) if "pip install" in line and "torch==" in line)
    lock_at = next(i for i, line in enumerate(runs) if "-r requirements.lock" in line)
    project_at = next(i for i, line in enumerate(runs) if "pip install" in line and "-e ." in line)
    assert torch_at < lock_at < project_at

    pyproject = (REPO / "pyproject.toml").read_text()
    torch_pin = re.search(r'"torch==([^"]+)"', pyproject).group(1)
    assert f"torch=={torch_pin}" in text  # the image trains with the torch the tests use
    assert "python3.11" in text
    cmd = re.search(r"^CMD (.+)$", text, re.MULTILINE).group(1)
    assert '"api", "grpc"' in cmd and '"pipeline.definitions"' in cmd
