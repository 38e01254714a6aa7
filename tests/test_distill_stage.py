"""The distillation stages ``lcm``, ``llcm``, ``llcm2``, ``llcm_pcm`` on a micro teacher (real trainer, real
MLflow store, real ``accelerate launch``, real SIGKILL)."""

from __future__ import annotations

import json

import pytest
import torch
from model_fixtures import copy_data, kill_after_first_checkpoint, micro_test_params, prepared_data
from safetensors.torch import load_file

from ops.config import stage_config
from ops.distill.stage import (
    build_lcm,
    build_llcm,
    build_llcm2,
    build_llcm_pcm,
    train_distilled,
    train_llcm,
)
from ops.layout import DataLayout
from ops.training.launch import run_trainer

STEPS = 4
DISTILL = [f"presets.micro.distill.steps={STEPS}", "distill.checkpoint_every=2", "distill.k=100"]


@pytest.fixture(scope="module")
def teacher_data(tmp_path_factory) -> DataLayout:
    return prepared_data(tmp_path_factory)


@pytest.fixture
def data(teacher_data, tmp_path) -> DataLayout:
    return copy_data(teacher_data, DataLayout(tmp_path / "data"))


def unet_weights(layout: DataLayout, model: str) -> dict[str, torch.Tensor]:
    return load_file(str(layout.model(model) / "unet" / "diffusion_pytorch_model.safetensors"))


def test_four_models_train_save_load_in_stock_diffusers_and_register(data):
    from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline
    from mlflow import MlflowClient

    params = micro_test_params(*DISTILL)
    summaries = {name: fn(params, data) for name, fn in
                 [("lcm", build_lcm), ("llcm", build_llcm), ("llcm2", build_llcm2),
                  ("llcm_pcm", build_llcm_pcm)]}  # fmt: skip
    assert {s["solver"] for s in summaries.values()} == {"ddim", "leapfrog", "leapfrog2"}
    for name, summary in summaries.items():
        assert summary["final_step"] == STEPS and summary["final_loss"] > 0
        meta = json.loads((data.model(name) / "llcm.json").read_text())
        assert meta["solver"] == summary["solver"] and meta["original_inference_steps"] == 10
        assert (data.model(name) / "samples.png").is_file()

    # The leapfrog step at h = 1/2 is DDIM, and all models draw the same random numbers per
    # step: LLCM and LCM end with bit-identical weights; the second-order solver does not.
    lcm, llcm, llcm2 = (unet_weights(data, n) for n in ("lcm", "llcm", "llcm2"))
    assert all(torch.equal(lcm[k], llcm[k]) for k in lcm)
    assert any(not torch.equal(lcm[k], llcm2[k]) for k in lcm)
    # the phased student takes llcm's jump with another consistency function
    pcm = unet_weights(data, "llcm_pcm")
    assert any(not torch.equal(llcm[k], pcm[k]) for k in llcm)
    assert json.loads((data.model("llcm_pcm") / "llcm.json").read_text())["phases"] == 4
    assert "phases" not in json.loads((data.model("llcm") / "llcm.json").read_text())
    phased = StableDiffusionPipeline.from_pretrained(data.model("llcm_pcm"))
    phased.set_progress_bar_config(disable=True)
    assert type(phased.scheduler).__name__ == "TCDScheduler"
    out = phased(prompt="MRI of a human brain, glioma", num_inference_steps=4, guidance_scale=4.0,
                 generator=torch.Generator().manual_seed(0), output_type="np")  # fmt: skip
    assert out.images.shape == (1, 32, 32, 3) and out.images.std() > 0

    pipe = LatentConsistencyModelPipeline.from_pretrained(data.model("llcm"))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt="MRI of a human brain, glioma", num_inference_steps=2, guidance_scale=4.0,
               generator=torch.Generator().manual_seed(0), output_type="np")  # fmt: skip
    assert out.images.shape == (1, 32, 32, 3) and out.images.std() > 0

    client = MlflowClient(f"sqlite:///{data.mlflow_db}")
    for name, summary in summaries.items():
        version = client.get_model_version_by_alias(name, "champion")
        assert int(version.version) == summary["registered_version"]
        run = client.get_run(summary["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.params["solver"] == summary["solver"]
        assert len(client.get_metric_history(run.info.run_id, "loss")) >= 1


def test_two_processes_distill_on_halves_of_the_global_batch(data, omp_one_thread):
    params = micro_test_params(*DISTILL, "distill.num_processes=2", "distill.register=false")
    summary = run_trainer("llcm", train_llcm, params, data, stage_config(params, "distill"))
    assert summary["world_size"] == 2
    assert summary["global_batch_size"] == 8 and summary["local_batch_size"] == 4
    assert summary["samples_per_rank"] == [STEPS * 4, STEPS * 4]
    assert (data.model("llcm") / "model_index.json").is_file()


def test_killed_distillation_resumes_from_its_last_checkpoint(data, tmp_path, omp_one_thread):
    params = micro_test_params(*DISTILL, "presets.micro.distill.steps=100000",
                               "distill.register=false")  # fmt: skip
    killed_at = kill_after_first_checkpoint("lcm", params, data, tmp_path)["step"]
    checkpoints = data.checkpoint_dir("lcm")
    assert killed_at >= 2

    finish = killed_at + 2
    summary = train_distilled(
        "lcm",
        micro_test_params(
            *DISTILL, f"presets.micro.distill.steps={finish}", "distill.register=false"
        ),  # fmt: skip
        data,
    )
    assert summary["resumed_from"] == killed_at and summary["final_step"] == finish
    assert summary["samples_per_rank"] == [2 * 8]
    assert not checkpoints.exists()


def test_ablation_student_is_llcm_with_its_own_k_and_stays_out_of_the_registry(data, capsys):
    """``llcm stage llcm_k50`` (what dvc.yaml's distill_k stage runs) distills the llcm
    recipe with k = 50: 1000/50 = 20 original inference steps; not registered as a model."""
    from bench_fixtures import write_params
    from mlflow import MlflowClient

    from ops.distill.ablation import ablation_rows, student_config
    from pipeline.cli import main

    params = micro_test_params(*DISTILL, "distill.k_ablation=[50]")
    cfg = student_config("llcm_k50", stage_config(params, "distill"))
    assert cfg["k"] == 50 and cfg["solvers"]["llcm_k50"] == "leapfrog" and not cfg["register"]
    assert ablation_rows(params) == {50: "llcm_k50", 100: "llcm"}

    params_file = write_params(params, data.root.parent / "params.yaml")
    rc = main(["stage", "llcm_k50", "--params", str(params_file), "--data", str(data.root)])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["k"] == 50 and summary["solver"] == "leapfrog"
    meta = json.loads((data.model("llcm_k50") / "llcm.json").read_text())
    assert meta["original_inference_steps"] == 20 and "registered_version" not in summary
    client = MlflowClient(f"sqlite:///{data.mlflow_db}")
    registered = {m.name for m in client.search_registered_models()}
    assert "llcm_k50" not in registered
    assert main(["stage", "llcm_kx", "--data", str(data.root)]) == 2  # neither k nor a variant
    assert "distill.variants has no 'kx'" in capsys.readouterr().err
    assert main(["stage", "llcm-x", "--data", str(data.root)]) == 2
    assert "unknown stage 'llcm-x'" in capsys.readouterr().err


def test_recipe_variant_is_llcm_with_its_keys_changed_and_stays_out_of_the_registry(data):
    """``distill.variants``: ``llcm_<name>`` trains with the variant's keys (here iCT's
    pseudo-Huber c and a stop-gradient target), llcm's solver, and is not registered."""
    from ops.distill.ablation import ablation_models, student_config
    from ops.distill.consistency import huber_constant
    from ops.distill.stage import build_ablation_student
    from pipeline.stages import resolve

    overrides = ["distill.variants={stopgrad: {ema_decay: 0.0, huber_c: auto}}"]
    params = micro_test_params(*DISTILL, *overrides)
    assert "llcm_stopgrad" in ablation_models(params)
    cfg = student_config("llcm_stopgrad", stage_config(params, "distill"))
    assert cfg["ema_decay"] == 0.0 and cfg["solvers"]["llcm_stopgrad"] == "leapfrog"
    assert not cfg["register"]
    assert huber_constant("auto", 4 * 8 * 8) == pytest.approx(0.00054 * 16)
    with pytest.raises(KeyError, match="has no 'nope'"):
        student_config("llcm_nope", stage_config(params, "distill"))

    summary = resolve("llcm_stopgrad")(params, data)
    assert summary["solver"] == "leapfrog" and "registered_version" not in summary
    assert (data.model("llcm_stopgrad") / "model_index.json").is_file()
    with pytest.raises(KeyError, match="not a study student"):
        build_ablation_student("teacher", params, data)
