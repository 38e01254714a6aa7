"""The DreamBooth stage on the micro teacher: priors from the frozen teacher, a fine-tuning run
that lowers the loss, and a saved directory that stock diffusers loads and samples."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from metric_fixtures import make_shape_dataset
from micro_sd import build_micro_sd
from safetensors.torch import save_file

from ops.baselines.dreambooth_stage import PRIOR_GRID, build_dreambooth
from ops.eval.context import evaluated_classes
from ops.layout import DataLayout
from ops.training.latent_data import INDEX_FILE, PROMPT_EMBEDS_FILE, PromptEmbeddings, shard_name


def write_latents(layout: DataLayout, manifest: pd.DataFrame, shape=(4, 8, 8)) -> pd.DataFrame:
    """A ``latents/`` directory in the latents stage's format for the manifest's training rows:
    random latents (the stage only needs their shape and class), two shards."""
    rows = manifest[(manifest["split"] == "train") & ~manifest["holdout"]]
    rows = rows.sort_values("image_id").reset_index(drop=True)
    half = len(rows) // 2
    index = rows[["image_id", "class_name", "prompt"]].copy()
    index["shard"] = [shard_name(0 if i < half else 1) for i in range(len(rows))]
    index["row"] = [i if i < half else i - half for i in range(len(rows))]
    layout.latents.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for number, count in ((0, half), (1, len(rows) - half)):
        latents = torch.randn(count, *shape, generator=g).to(torch.float16)
        save_file({"latents": latents}, str(layout.latents / shard_name(number)))
    index.to_parquet(layout.latents / INDEX_FILE, index=False)
    prompts = ["", *sorted(index["prompt"].unique())]
    PromptEmbeddings(prompts, torch.zeros(len(prompts), 16, 32)).save(
        layout.latents / PROMPT_EMBEDS_FILE
    )
    return index


@pytest.fixture(scope="module")
def dreambooth_run(tmp_path_factory):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # micro convolutions: more threads only spin on shared cores
    from ops.config import load_params

    root = tmp_path_factory.mktemp("dreambooth")
    layout = DataLayout.from_env(root / "data")
    manifest = make_shape_dataset(layout, n_train=8, n_test=4, n_holdout=1, size=16)
    write_latents(layout, manifest)
    build_micro_sd(layout.model("teacher"))
    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml", preset="micro")
    params["dreambooth"].update(instance_images_per_class=3, prior_images_per_class=4)
    params["presets"]["micro"]["dreambooth"].update(steps=12, lr=2e-3, batch_size=3)
    try:
        summary = build_dreambooth(params, layout)
    finally:
        torch.set_num_threads(previous)
    return layout, manifest, params, summary


def test_trains_on_the_evaluated_classes_with_teacher_priors(dreambooth_run):
    layout, manifest, params, summary = dreambooth_run
    classes = evaluated_classes(params, manifest)
    assert summary["classes"] == list(classes) and len(classes) == 2
    assert summary["instance_images"] == {c: 3 for c in classes}
    assert summary["prior_images"] == {c: 4 for c in classes}
    meta = json.loads((layout.model("dreambooth") / "dreambooth.json").read_text())
    assert meta["identifier"] == "sks"
    for name, prompt in classes.items():
        assert meta["prompts"][name] == f"a sks {prompt}"
        assert meta["class_prompts"][name] == prompt
        ids = sorted(
            manifest[
                (manifest.class_name == name) & (manifest.split == "train") & ~manifest.holdout
            ].image_id
        )
        assert meta["instance_image_ids"][name] == ids[:3]  # first by image id: deterministic
    assert (layout.model("dreambooth") / PRIOR_GRID).is_file()


def test_fine_tuning_lowers_the_loss_on_a_fixed_batch(dreambooth_run):
    summary = dreambooth_run[3]
    assert summary["loss_after"] < summary["loss_before"], summary
    assert len(summary["first_losses"]) == 5 and all(x > 0 for x in summary["last_losses"])


def test_saved_directory_loads_and_samples_in_stock_diffusers(dreambooth_run):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    layout, _, _, _ = dreambooth_run
    out = layout.model("dreambooth")
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    pipe = StableDiffusionPipeline.from_pretrained(out, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    teacher = UNet2DConditionModel.from_pretrained(layout.model("teacher") / "unet")
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(pipe.unet.state_dict().values(), teacher.state_dict().values(), strict=True)
    )
    assert changed, "the saved UNet is the teacher's: fine-tuning was not saved"
    assert pipe.scheduler.config.timestep_spacing == "leading"  # the teacher's own scheduler
    image = pipe("a sks x-ray", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 16, 16, 3)


def test_asset_through_the_local_launcher_shares_priors_across_two_ranks(
    dreambooth_run, tmp_path, omp_one_thread
):
    """The ``dreambooth`` asset with 2 launched processes: the ranks split the prior classes,
    rank 0 fine-tunes, and the result is the single-process model bit for bit."""
    import shutil

    import dagster as dg
    from bench_fixtures import write_params
    from dagster_fixtures import asset_resources
    from safetensors.torch import load_file

    from assets.dreambooth import dreambooth

    layout, _, params, single = dreambooth_run
    copy = DataLayout.from_env(tmp_path / "data")
    shutil.copytree(layout.root, copy.root, ignore=shutil.ignore_patterns("dreambooth"))
    params_file = write_params(params, tmp_path / "p.yaml")
    resources = asset_resources(copy.root, params_file=params_file, processes=2)
    result = dg.materialize([dreambooth], resources=resources)
    assert result.success
    [event] = result.asset_materializations_for_node("dreambooth")
    assert event.metadata["world_size"].value == 2 and single["world_size"] == 1
    assert event.metadata["loss_after"].value == single["loss_after"]
    weights = "unet/diffusion_pytorch_model.safetensors"
    one, two = (load_file(str(x.model("dreambooth") / weights)) for x in (layout, copy))
    assert all(torch.equal(one[k], two[k]) for k in one)
