"""The training launcher: pod specs as data, a real 2-process launch through Dagster Pipes, and
failures that say why.

The local launches are real ``accelerate launch`` runs through Dagster Pipes (two gloo ranks
on CPU for the success case, one process for the failure); together they cost ~25 s on two
cores, so there are exactly two of them.
"""

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import pytest

from pipeline.launcher import (
    CPU_CONFIG,
    GPU_POOL_TAG,
    LauncherResource,
    accelerate_command,
    stage_script,
    training_run_tags,
)
from pipeline.launcher.k8s_spec import GPU_RESOURCE, LAUNCH_LABEL, RANK_LABEL
from pipeline.launcher.local_pipes import probable_cause
from pipeline.pipes_entry import SUMMARY_MESSAGE_KEY, elastic_main, resolve_stage
from pipeline.pipes_entry import main as pipes_entry_main
from pipeline.resources import DataResource, ParamsResource

# dagster-k8s 0.29.27 next to dagster 1.13.28 (no 0.29.28 on PyPI yet): harmless, and noisy.
pytestmark = pytest.mark.filterwarnings("ignore:Found version mismatch:UserWarning")

TESTS_DIR = Path(__file__).resolve().parent
#: Launched ranks import the probes as top-level ``pipes_probe``, as pytest does here.
PROBE_ENV = {"PYTHONPATH": str(TESTS_DIR)}
A100_SELECTOR = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _k8s_launcher(**kwargs: Any) -> LauncherResource:
    return LauncherResource(
        kind="k8s",
        image="registry.example.com/llcm-medimgs:0.1.0",
        data_pvc="llcm-data",
        data_mount_path="/data",
        node_selector=A100_SELECTOR,
        tolerations=[GPU_TOLERATION],
        **kwargs,
    )


def _flag(command: list[str], name: str) -> str:
    """The value after ``name`` in an argv list."""
    return command[command.index(name) + 1]


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def _script() -> list[str]:
    return stage_script("teacher", data_root="/data", preset="sd15", overrides=["distill.k=10"])


# -- Kubernetes specs, as data ---------------------------------------------------------------
def test_k8s_single_node_pod_requests_8_gpus_on_a100_nodes_with_shared_data() -> None:
    plan = _k8s_launcher().k8s_plan(_script(), launch_id="llcm-run1-teacher-abcde")
    spec = plan.rank0_spec
    (container,) = spec["containers"]

    assert container["resources"]["limits"][GPU_RESOURCE] == "8"
    assert container["resources"]["requests"][GPU_RESOURCE] == "8"
    assert spec["nodeSelector"] == A100_SELECTOR
    assert GPU_TOLERATION in spec["tolerations"]
    assert spec["restartPolicy"] == "Never"

    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "llcm-data"
    assert mounts["data"] == "/data"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory" and mounts["dshm"] == "/dev/shm"
    assert _env(container)["LLCM_DATA"] == "/data"

    command = container["command"]
    assert command[:3] == ["python", "-m", "accelerate.commands.launch"]
    assert _flag(command, "--num_processes") == "8"
    assert _flag(command, "--config_file") == "deployment/accelerate/8xA100-bf16.yaml"
    assert "--machine_rank" not in command and "--main_process_ip" not in command
    entry = command[command.index("pipeline.pipes_entry") - 1 :]
    assert entry[:3] == ["-m", "pipeline.pipes_entry", "teacher"]
    assert _flag(entry, "--data") == "/data" and _flag(entry, "--preset") == "sd15"
    assert _flag(entry, "--set") == "distill.k=10"
    assert plan.workers == [] and plan.service is None


def test_k8s_pod_spec_is_a_valid_kubernetes_pod_as_pipes_k8s_client_builds_it() -> None:
    """Run the spec through dagster-k8s's own pod builder: unknown or misspelt fields raise."""
    from dagster_k8s.pipes import build_pod_body

    plan = _k8s_launcher().k8s_plan(_script(), launch_id="llcm-run1-teacher-abcde")
    pod = build_pod_body(
        pod_name="dagster-test",
        image=None,
        command=None,
        env_vars={"DAGSTER_PIPES_CONTEXT": "x", "DAGSTER_PIPES_MESSAGES": "y"},
        base_pod_meta=plan.rank0_meta,
        base_pod_spec=plan.rank0_spec,
    )
    container = pod.spec.containers[0]
    assert container.resources.limits[GPU_RESOURCE] == "8"
    assert pod.spec.tolerations[0].key == "nvidia.com/gpu"
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == "llcm-data"
    assert pod.metadata.labels[LAUNCH_LABEL] == "llcm-run1-teacher-abcde"
    env = {e.name for e in container.env}
    assert {"LLCM_DATA", "DAGSTER_PIPES_CONTEXT"} <= env


def test_k8s_multi_node_plan_has_one_pod_per_machine_rank_and_a_rendezvous_service() -> None:
    from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict
    from kubernetes.client import V1Pod, V1Service

    plan = _k8s_launcher(num_machines=2).k8s_plan(
        _script(), launch_id="llcm-run1-teacher-abcde", namespace="training"
    )
    rank0 = plan.rank0_spec["containers"][0]["command"]
    (worker,) = plan.workers
    rank1 = worker["spec"]["containers"][0]["command"]
    host = "llcm-run1-teacher-abcde-rdzv.training.svc.cluster.local"

    for rank, command in enumerate([rank0, rank1]):
        assert _flag(command, "--num_machines") == "2"
        assert _flag(command, "--num_processes") == "16"  # accelerate counts all ranks
        assert _flag(command, "--machine_rank") == str(rank)
        assert _flag(command, "--main_process_ip") == host
        assert _flag(command, "--main_process_port") == "29500"
        assert _flag(command, "--config_file").endswith("multinode-2x8xA100-bf16.yaml")
    assert worker["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "8"
    assert worker["metadata"]["labels"][RANK_LABEL] == "1"

    service = plan.service
    assert service is not None and service["spec"]["clusterIP"] == "None"
    selector = service["spec"]["selector"]
    assert selector.items() <= plan.rank0_meta["labels"].items()  # selects rank 0 ...
    assert not selector.items() <= worker["metadata"]["labels"].items()  # ... and only it
    assert plan.rank0_spec["containers"][0]["ports"][0]["containerPort"] == 29500

    # Both manifests deserialise into the Kubernetes client's models.
    assert k8s_model_from_dict(V1Pod, k8s_snake_case_dict(V1Pod, worker)).spec.node_selector
    assert k8s_model_from_dict(V1Service, k8s_snake_case_dict(V1Service, service)).spec.selector


def test_k8s_launcher_needs_an_image_from_config_or_code_location() -> None:
    launcher = LauncherResource(kind="k8s")
    with pytest.raises(ValueError, match="needs an image"):
        launcher.k8s_plan(_script(), launch_id="x")
    plan = launcher.k8s_plan(_script(), launch_id="x", image="from-code-location:1")
    assert plan.rank0_spec["containers"][0]["image"] == "from-code-location:1"


def test_training_run_tags_are_valid_dagster_k8s_config() -> None:
    from dagster_k8s.job import get_user_defined_k8s_config

    tags = training_run_tags(node_selector=A100_SELECTOR, tolerations=[GPU_TOLERATION])
    assert tags[GPU_POOL_TAG] == "a100"
    config = get_user_defined_k8s_config(tags)
    assert config.container_config["resources"]["limits"][GPU_RESOURCE] == "8"
    assert config.pod_spec_config["node_selector"] == A100_SELECTOR
    assert config.pod_spec_config["tolerations"] == [GPU_TOLERATION]


def test_launcher_from_env_parses_typed_values() -> None:
    launcher = LauncherResource.from_env(
        {
            "LLCM_LAUNCHER_KIND": "k8s",
            "LLCM_LAUNCHER_NUM_MACHINES": "2",
            "LLCM_LAUNCHER_MIXED_PRECISION": "no",  # stays a string, not YAML's False
            "LLCM_LAUNCHER_TOLERATIONS": json.dumps([GPU_TOLERATION]),
            "LLCM_LAUNCHER_NODE_SELECTOR": json.dumps(A100_SELECTOR),
            "LLCM_LAUNCHER_DATA_PVC": "shared-data",
        }
    )
    assert launcher.kind == "k8s" and launcher.num_machines == 2
    assert launcher.mixed_precision == "no"
    assert launcher.tolerations == [GPU_TOLERATION] and launcher.node_selector == A100_SELECTOR
    assert launcher.data_pvc == "shared-data"
    assert LauncherResource.from_env({}).kind == "inprocess"


# -- accelerate command lines ------------------------------------------------------------------
def test_local_accelerate_command_uses_multi_gpu_launcher_for_several_cpu_processes() -> None:
    script = ["-m", "pipeline.pipes_entry", "probe"]
    two = accelerate_command(script, num_processes=2, main_process_port=29555)
    assert "--multi_gpu" in two and "--cpu" not in two  # --cpu would run ONE process
    assert _flag(two, "--num_processes") == "2" and two[-3:] == script
    one = accelerate_command(script, num_processes=1)
    assert "--multi_gpu" not in one
    with_config = accelerate_command(script, config_file=CPU_CONFIG)
    assert _flag(with_config, "--config_file") == CPU_CONFIG and "--multi_gpu" not in with_config


# -- the Pipes entry point ---------------------------------------------------------------------
def test_resolve_stage_accepts_import_strings_and_rejects_unknown_names() -> None:
    assert resolve_stage("pipes_probe:summary_probe").__name__ == "summary_probe"
    with pytest.raises(KeyError, match="known|not one of"):
        resolve_stage("no_such_stage")


def test_pipes_entry_without_dagster_runs_the_stage_and_prints_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert (
        pipes_entry_main(["pipes_probe:summary_probe", "--preset", "micro", "--data", str(data)])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["model_dir"] == str(data / "models" / "teacher")
    assert summary["per_class"] == {"ct": 6, "mri": 6} and summary["preset"] == "micro"


# -- execution through Dagster -----------------------------------------------------------------
def _probe_asset(stage: str) -> dg.AssetsDefinition:
    @dg.asset(name="probe")
    def probe(
        context: dg.AssetExecutionContext,
        launcher: LauncherResource,
        params: ParamsResource,
        data: DataResource,
    ) -> dg.MaterializeResult:
        run = launcher.run_stage(context, stage, params=params, data=data)
        return run.materialize_result({"summary_keys": sorted(run.summary)})

    return probe


def _materialize(
    stage: str,
    launcher: LauncherResource,
    tmp_path: Path,
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [_probe_asset(stage)],
        resources={
            "launcher": launcher,
            "params": ParamsResource(preset="micro"),
            "data": DataResource(root=str(tmp_path / "data")),
        },
        instance=instance,
        raise_on_error=False,
    )


def test_inprocess_launcher_calls_the_stage_and_types_its_metadata(tmp_path: Path) -> None:
    result = _materialize("pipes_probe:summary_probe", LauncherResource(), tmp_path)
    assert result.success
    metadata = result.asset_materializations_for_node("probe")[0].metadata
    assert metadata["images"] == dg.IntMetadataValue(12)
    assert isinstance(metadata["model_dir"], dg.PathMetadataValue)
    assert metadata["per_class"] == dg.JsonMetadataValue({"ct": 6, "mri": 6})
    assert metadata["launcher"] == dg.TextMetadataValue("inprocess")


def test_local_launch_runs_two_ranks_and_reports_through_pipes(tmp_path: Path) -> None:
    launcher = LauncherResource(kind="local", accelerate_config=CPU_CONFIG, env=PROBE_ENV)
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize("pipes_probe:world_size_probe", launcher, tmp_path, instance)
    assert result.success
    metadata = result.asset_materializations_for_node("probe")[0].metadata
    assert metadata["world_size"] == dg.IntMetadataValue(2)
    assert metadata["ranks_seen"] == dg.JsonMetadataValue([0, 1])  # both ranks joined gloo
    assert metadata["rank0"] == dg.BoolMetadataValue(True)  # the reporter is rank 0
    assert metadata["backend"] == dg.TextMetadataValue("gloo")
    assert metadata["preset"] == dg.TextMetadataValue("micro")
    assert metadata["launcher"] == dg.TextMetadataValue("local")
    assert metadata["launch_processes"] == dg.IntMetadataValue(2)
    assert "world_size" in metadata["summary_keys"].data  # the summary came back as data
    # The stage's own logging reached the Dagster event log, from rank 0 only.
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert sum("probe rank 0 of 2" in m for m in messages) == 1
    assert not any("probe rank 1 of 2" in m for m in messages)


def test_failed_launch_fails_the_materialisation_with_the_stage_error(tmp_path: Path) -> None:
    # One process keeps this fast; the multi-rank failure summary is covered below.
    launcher = LauncherResource(kind="local", num_processes=1, env=PROBE_ENV)
    result = _materialize("pipes_probe:failing_probe", launcher, tmp_path)
    assert not result.success
    assert result.asset_materializations_for_node("probe") == []
    (failure,) = result.get_step_failure_events()
    data = failure.step_failure_data.user_failure_data
    assert data is not None
    assert data.description.startswith(
        "launched process failed (exit code 1): RuntimeError: probe exploded on purpose"
    )
    assert "probe exploded on purpose" in data.metadata["stderr_tail"].text
    assert data.metadata["exit_code"] == dg.IntMetadataValue(1)


def test_failing_rank_records_its_error_for_the_torchrun_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun each rank writes its exception where the agent's failure summary (the
    tail a multi-rank launch quotes) picks it up; without it the summary says only "exit 1"."""
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    with pytest.raises(RuntimeError, match="probe exploded"):
        elastic_main(["pipes_probe:failing_probe", "--preset", "micro"])
    recorded = json.loads(error_file.read_text())["message"]
    assert "probe exploded on purpose" in json.dumps(recorded)


def test_probable_cause_skips_torchrun_wrapper_errors() -> None:
    tail = "\n".join(
        [
            "  RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
            "pipeline.pipes_entry FAILED",
            "subprocess.CalledProcessError: Command '[...]' returned non-zero exit status 1.",
        ]
    )
    assert probable_cause(tail) == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert probable_cause("nothing to see") is None


# -- k8s execution with a fake cluster -----------------------------------------------------------
class _FakeCoreApi:
    """Records what the launcher asks of the Kubernetes API."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def create_namespaced_service(self, namespace: str, body: dict) -> None:
        self.calls.append(("create_service", body["metadata"]["name"]))

    def create_namespaced_pod(self, namespace: str, body: dict) -> None:
        self.calls.append(("create_pod", body["metadata"]["labels"][RANK_LABEL]))

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any:
        self.calls.append(("list_pods", label_selector))
        pod = SimpleNamespace(
            metadata=SimpleNamespace(name="rank0-pod", labels={RANK_LABEL: "0"}),
            status=SimpleNamespace(phase="Failed"),
        )
        return SimpleNamespace(items=[pod])

    def read_namespaced_pod_log(self, name: str, namespace: str, tail_lines: int) -> str:
        return "torch.OutOfMemoryError: CUDA out of memory on rank 3"

    def delete_collection_namespaced_pod(self, namespace: str, label_selector: str) -> None:
        self.calls.append(("delete_pods", label_selector))

    def delete_namespaced_service(self, name: str, namespace: str) -> None:
        self.calls.append(("delete_service", name))


class _FakePipesK8sClient:
    def __init__(self, core_api: _FakeCoreApi, fail: bool) -> None:
        self.core_api, self.fail, self.kwargs = core_api, fail, {}

    def run(self, **kwargs: Any) -> Any:
        self.kwargs = kwargs
        self.core_api.calls.append(("run_rank0", kwargs["namespace"]))
        if self.fail:
            raise RuntimeError("pod failed with phase Failed")
        message = {SUMMARY_MESSAGE_KEY: {"steps": 10000, "world_size": 16}}
        return SimpleNamespace(
            get_custom_messages=lambda: [message],
            get_results=lambda implicit_materializations: [],
        )


@pytest.mark.parametrize("fail", [False, True])
def test_k8s_launch_creates_workers_before_rank0_and_always_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> None:
    core_api = _FakeCoreApi()
    client = _FakePipesK8sClient(core_api, fail)
    monkeypatch.setattr(
        LauncherResource, "_k8s_clients", lambda self: (client, core_api, "training")
    )
    result = _materialize("teacher", _k8s_launcher(num_machines=2), tmp_path)

    names = [name for name, _ in core_api.calls]
    assert names[:3] == ["create_service", "create_pod", "run_rank0"]
    assert names[-2:] == ["delete_pods", "delete_service"]
    assert client.kwargs["delete_pod_on_completion"] is False  # we delete, after the log tail
    rank0_command = client.kwargs["base_pod_spec"]["containers"][0]["command"]
    assert _flag(rank0_command, "--machine_rank") == "0"
    assert ".training.svc.cluster.local" in _flag(rank0_command, "--main_process_ip")
    if fail:
        assert not result.success
        (failure,) = result.get_step_failure_events()
        description = failure.step_failure_data.user_failure_data.description
        assert (
            description.startswith("training launch llcm-")
            and "failed: torch.OutOfMemoryError: CUDA out of memory on rank 3" in description
        )
    else:
        assert result.success
        metadata = result.asset_materializations_for_node("probe")[0].metadata
        assert metadata["steps"] == dg.IntMetadataValue(10000)
        assert metadata["launch_processes"] == dg.IntMetadataValue(16)
