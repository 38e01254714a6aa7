"""Real multi-process and interrupted runs of the teacher trainer (subprocesses, micro preset).

- 2 processes under ``accelerate launch --multi_gpu`` with ``Accelerator(cpu=True)`` (gloo):
  both ranks train, each on half of the same global batch, and the loss curve matches a
  single-process run of the same configuration.
- SIGKILL after the first checkpoint, then restart: the run resumes at the checkpoint's step,
  keeps its MLflow run and loss curve, and finishes at the requested step.
"""

from __future__ import annotations

import pytest
from model_fixtures import copy_data, kill_after_first_checkpoint, micro_test_params, prepared_data

from ops.config import stage_config
from ops.layout import DataLayout
from ops.models.teacher import train_teacher
from ops.training.launch import run_trainer

STEPS = 4


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> DataLayout:
    return prepared_data(tmp_path_factory)


@pytest.fixture
def data(prepared, tmp_path) -> DataLayout:
    return copy_data(prepared, DataLayout(tmp_path / "data"))


def test_two_processes_train_on_halves_of_the_same_global_batch(data, tmp_path, omp_one_thread):
    params = micro_test_params(
        f"presets.micro.teacher.steps={STEPS}",
        "presets.micro.teacher.num_processes=2",
        "teacher.checkpoint_every=2",
    )
    two = run_trainer("teacher", train_teacher, params, data, stage_config(params, "teacher"))
    assert two["world_size"] == 2
    assert two["global_batch_size"] == 8 and two["local_batch_size"] == 4
    assert two["samples_per_rank"] == [STEPS * 4, STEPS * 4]  # both ranks trained every step
    assert two["final_step"] == STEPS
    assert (data.model("teacher") / "model_index.json").is_file()

    single = copy_data(data, DataLayout(tmp_path / "single"))
    one = train_teacher(micro_test_params(f"presets.micro.teacher.steps={STEPS}"), single)
    assert one["world_size"] == 1 and one["local_batch_size"] == 8
    # same items, same noise, same timesteps per step: the same losses, up to float reduction
    first_two, first_one = two["loss_curve"][0][1], one["loss_curve"][0][1]
    assert first_two == pytest.approx(first_one, rel=1e-5)
    for (s2, l2), (s1, l1) in zip(two["loss_curve"], one["loss_curve"], strict=True):
        assert s2 == s1 and l2 == pytest.approx(l1, rel=1e-2)


def test_killed_run_resumes_from_its_last_checkpoint(data, tmp_path, omp_one_thread):
    params = micro_test_params("presets.micro.teacher.steps=100000", "teacher.checkpoint_every=2")
    state = kill_after_first_checkpoint("teacher", params, data, tmp_path)
    killed_at = state["step"]
    assert killed_at >= 2 and state["samples_seen"] == killed_at * 8

    finish = killed_at + 2
    summary = train_teacher(micro_test_params(f"presets.micro.teacher.steps={finish}"), data)
    assert summary["resumed_from"] == killed_at
    assert summary["final_step"] == finish
    assert summary["samples_per_rank"] == [2 * 8]  # only the remaining steps were trained
    curve = summary["loss_curve"]
    assert curve[:killed_at] == state["loss_curve"]
    assert [step for step, _ in curve] == list(range(1, finish + 1))
    assert summary["mlflow_run_id"] == state["mlflow_run_id"]  # the same MLflow run goes on
    assert not data.checkpoint_dir("teacher").exists()

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{data.mlflow_db}")
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
    logged = {m.step for m in client.get_metric_history(summary["mlflow_run_id"], "loss")}
    assert set(range(1, finish + 1)) <= logged


def test_vae_with_the_perceptual_term_trains_in_two_processes(data, omp_one_thread):
    """The tiny default's path: the feature network is trained once (rank 0) and handed to
    both ranks; both then train the VAE on halves of the global batch."""
    from ops.models.autoencoder import train_autoencoder

    params = micro_test_params(
        "presets.micro.autoencoder.steps=2",
        "presets.micro.autoencoder.num_processes=2",
        "presets.micro.autoencoder.perceptual_weight=0.5",
        "presets.micro.autoencoder.perceptual_epochs=1",
    )
    cfg = stage_config(params, "autoencoder")
    summary = run_trainer("autoencoder", train_autoencoder, params, data, cfg)
    assert summary["world_size"] == 2 and summary["samples_per_rank"] == [2 * 4, 2 * 4]
    assert 0 <= summary["perceptual_train_accuracy"] <= 1 and summary["perceptual_seconds"] > 0
    assert (data.model("base") / "vae" / "config.json").is_file()
