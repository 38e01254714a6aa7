"""autoencoder -> latents -> teacher on the fixture manifest (micro preset, in-process)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from model_fixtures import copy_data, micro_test_params, prepared_data, stage_summary
from safetensors.torch import load_file

from ops.layout import DataLayout
from ops.models.latents import build_latents
from ops.training.latent_data import LatentDataset, PromptEmbeddings

BASE_TRAIN_IMAGES = 4 * 6  # 4 base classes x 6 train images; the held-out class is skipped


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> DataLayout:
    return prepared_data(tmp_path_factory)


def weight_files(directory):
    return sorted(
        p.suffix
        for p in directory.rglob("*")
        if p.suffix in {".bin", ".safetensors", ".pt", ".ckpt"}
    )


def test_autoencoder_writes_frozen_base_components(trained):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    summary = stage_summary(trained, "autoencoder")
    base = trained.model("base")
    assert set(weight_files(base)) == {".safetensors"}
    vae = AutoencoderKL.from_pretrained(base / "vae")
    assert vae.config.scaling_factor == pytest.approx(summary["scaling_factor"])
    assert vae.config.scaling_factor != 0.18215  # fitted to these images, not SD's constant
    assert CLIPTokenizer.from_pretrained(base / "tokenizer").model_max_length == 24
    assert CLIPTextModel.from_pretrained(base / "text_encoder").config.hidden_size == 32
    assert summary["train_images"] == BASE_TRAIN_IMAGES
    assert math.isfinite(summary["psnr_db"]) and summary["psnr_db"] > 0
    assert (base / "reconstructions.png").is_file()
    assert summary["final_step"] == 4 and summary["world_size"] == 1
    assert not trained.checkpoint_dir("autoencoder").exists()  # cleared after success


def test_latents_hold_the_base_training_split_at_unit_scale(trained):
    manifest = pd.read_parquet(trained.manifest)
    data = LatentDataset.load(trained.latents)
    assert len(data) == BASE_TRAIN_IMAGES
    held_out = set(manifest.loc[manifest["holdout"], "image_id"])
    assert held_out and not held_out & set(data.index["image_id"])
    assert set(data.index["shard"]) == {f"shard-0000{i}.safetensors" for i in range(3)}
    assert data.latent_shape == (4, 16, 16) and data.latents.dtype == torch.float16
    # the scaling factor was fitted on these very images: unit standard deviation
    assert data.latents.float().std().item() == pytest.approx(1.0, abs=0.05)
    assert data.prompts.prompts[0] == "" and len(data.prompts.prompts) == 5
    assert data.prompts.embeds.shape == (5, 24, 32)
    assert len(data.class_prompts()) == 4


def test_latents_skip_unchanged_inputs_and_resume_missing_shards(trained, tmp_path):
    layout = copy_data(trained, DataLayout(tmp_path / "data"))
    params = micro_test_params()
    before = {p.name: p.stat().st_mtime_ns for p in layout.latents.iterdir()}
    again = build_latents(params, layout)
    assert again["skipped"] and again["shards_written"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in layout.latents.iterdir()} == before

    reference = load_file(str(layout.latents / "shard-00002.safetensors"))["latents"].clone()
    (layout.latents / "shard-00001.safetensors").unlink()  # lost
    with (layout.latents / "shard-00002.safetensors").open("r+b") as fh:
        fh.truncate(100)  # interrupted mid-write by something other than us
    resumed = build_latents(params, layout)
    assert not resumed["skipped"] and resumed["shards_written"] == 2
    assert torch.equal(
        load_file(str(layout.latents / "shard-00002.safetensors"))["latents"], reference
    )
    assert not list(layout.latents.glob(".*tmp"))

    manifest = pd.read_parquet(layout.manifest)
    first_train = manifest.index[(manifest["split"] == "train") & ~manifest["holdout"]][0]
    manifest.drop(index=first_train).to_parquet(layout.manifest)
    changed = build_latents(params, layout)
    assert changed["images"] == BASE_TRAIN_IMAGES - 1 and changed["shards_written"] == 3


def test_teacher_is_a_stock_stable_diffusion_pipeline(trained):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

    directory = trained.model("teacher")
    assert set(weight_files(directory)) == {".safetensors"}
    index = json.loads((directory / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["requires_safety_checker"] is False
    pipe = StableDiffusionPipeline.from_pretrained(directory)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.safety_checker is None and isinstance(pipe.scheduler, DDIMScheduler)
    prompt = "MRI of a human brain, glioma"
    ddim = pipe(prompt, num_inference_steps=2, guidance_scale=3.0, output_type="np",
                generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert ddim.shape == (1, 32, 32, 3) and np.isfinite(ddim).all()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++"
    )
    dpm = pipe(prompt, num_inference_steps=3, guidance_scale=3.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert dpm.shape == (1, 32, 32, 3) and np.isfinite(dpm).all()


def test_teacher_summary_and_sample_grid(trained):
    from PIL import Image

    summary = stage_summary(trained, "teacher")
    assert summary["final_step"] == 6 and summary["resumed_from"] == 0
    assert [step for step, _ in summary["loss_curve"]] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(loss) for _, loss in summary["loss_curve"])
    grid = Image.open(summary["grid"])
    assert grid.size[1] == 4 * (32 + 2) + 2  # one row per base class
    assert not trained.checkpoint_dir("teacher").exists()


def test_mlflow_has_one_finished_run_per_training_stage(trained):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{trained.mlflow_db}")
    experiment = client.get_experiment_by_name("llcm")
    runs = {r.data.tags["stage"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"autoencoder", "teacher"}
    for stage, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.info.run_id == stage_summary(trained, stage)["mlflow_run_id"]
        assert "learning_rate" in run.data.params
        history = client.get_metric_history(run.info.run_id, "loss")
        assert len(history) >= 2 and all(math.isfinite(m.value) for m in history)
        assert "step_time_s" in run.data.metrics
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"model", "samples"} <= artifacts
    teacher_model = {a.path for a in client.list_artifacts(runs["teacher"].info.run_id, "model")}
    assert "model/model_index.json" in teacher_model
    assert "psnr_db" in runs["autoencoder"].data.metrics


def test_prompt_dropout_replaces_prompts_with_the_empty_one():
    from ops.training.batches import GlobalBatchPlan

    prompts = PromptEmbeddings(["", "a", "b"], torch.arange(3.0).view(3, 1, 1).expand(3, 2, 4))
    index = pd.DataFrame({"prompt": ["a", "b"] * 500, "class_name": ["A", "B"] * 500})
    data = LatentDataset(torch.zeros(1000, 4, 2, 2, dtype=torch.float16), index, prompts)
    batch = data.batch(GlobalBatchPlan(1000, 1000, seed=0).batch(0), prompt_dropout=0.1)
    dropped = (batch.prompt_ids == 0).float().mean().item()
    assert 0.07 < dropped < 0.13
    assert torch.equal(batch.encoder_hidden_states[:, 0, 0], batch.prompt_ids.float())
    assert (data.batch(GlobalBatchPlan(1000, 1000, seed=0).batch(0)).prompt_ids > 0).all()
