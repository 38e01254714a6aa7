"""``llcm finetune`` on a folder of new classes (micro preset) and ``llcm generate --class``
through the registry: the workspace, replay, the fine-tuned teacher and student, the class
table, the registry entry, and the errors a user meets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_fixtures import copy_data, draw_shape, micro_test_params, prepared_data
from PIL import Image

from ops.layout import DataLayout
from pipeline.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = ["presets.micro.distill.steps=2", "distill.k=100", "finetune.replay_per_class=3"]
NEW = {"laminitis": "ring", "healthy": "bar"}  # class folder -> drawn shape


def custom_folder(root, resolution=32, per_class=10):
    """A user's folder of class folders: two classes the base models never saw."""
    rng = np.random.default_rng(1)
    for name, shape in NEW.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            draw_shape(shape, resolution, rng).save(root / name / f"{i:02d}.png")
    (root / "healthy" / "notes.txt").write_text("not an image")  # recorded as a reject
    return root


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    from ops.distill.stage import build_llcm

    base = prepared_data(tmp_path_factory)
    data = copy_data(base, DataLayout(tmp_path_factory.mktemp("ft") / "data"))
    build_llcm(micro_test_params(*BASE), data)  # the champion a fine-tune starts from
    folder = custom_folder(tmp_path_factory.mktemp("user") / "hooves")
    argv = ["finetune", str(folder), "--name", "hooves", "--species", "horse",
            "--body-part", "hoof", "--modality", "X-ray", "--steps", "3",
            "--preset", "micro", "--data", str(data.root)]  # fmt: skip
    for override in BASE:
        argv += ["--set", override]
    return data, argv


@pytest.fixture(scope="module")
def run_output(finetuned, capsys_module):
    """The CLI run, with a Dagster instance of its own: ``llcm finetune`` adds the partition."""
    data, argv = finetuned
    with pytest.MonkeyPatch.context() as env:
        home = data.root.parent / "dagster_home"
        home.mkdir()
        env.setenv("DAGSTER_HOME", str(home))
        rc = main(argv)
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            partitions = instance.get_dynamic_partitions("custom_datasets")
    return rc, capsys_module(), partitions


@pytest.fixture(scope="module")
def capsys_module():
    """stdout of a module-scoped call (pytest's capsys is per test)."""
    import contextlib
    import io

    buffer = io.StringIO()
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(buffer))
    yield lambda: (stack.close(), buffer.getvalue())[1]
    stack.close()


def test_finetune_saves_registers_and_reports_the_new_classes(finetuned, run_output):
    from diffusers import LatentConsistencyModelPipeline
    from mlflow import MlflowClient

    data, _ = finetuned
    rc, out, partitions = run_output
    assert rc == 0
    assert partitions == ["hooves"]  # the Dagster UI lists the dataset
    ws = data.custom("hooves")
    manifest = json.loads(out[out.index("{") :])
    classes = manifest["classes"]
    assert set(classes) == {"horse_hoof_xray_laminitis", "horse_hoof_xray_healthy"}
    assert classes["horse_hoof_xray_laminitis"] == "X-ray of a horse hoof, laminitis"
    assert "| horse_hoof_xray_laminitis | X-ray of a horse hoof, laminitis |" in out

    # the workspace holds the ingested dataset, its rejects, latents and replay
    import pandas as pd

    rejects = pd.read_parquet(ws / "medimgs" / "rejects.parquet")
    assert "notes.txt" in " ".join(rejects["source_file"])
    replay = json.loads((ws / "latents" / "replay.json").read_text())
    assert len(replay["image_ids"]) == 4 * 3  # 4 base classes x replay_per_class
    from ops.training.latent_data import LatentDataset

    mixed = LatentDataset.load(ws / "latents")
    assert set(mixed.index["class_name"]) >= set(classes) | {"chest_xray_normal"}

    # the product: a stock LatentConsistencyModelPipeline with its class table
    model_dir = data.finetuned_model("hooves")
    table = json.loads((model_dir / "classes.json").read_text())
    assert set(classes) <= set(table) and "brain_mri_glioma" in table  # replayed classes kept
    pipe = LatentConsistencyModelPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt=classes["horse_hoof_xray_laminitis"], num_inference_steps=2,
                 guidance_scale=4.0, generator=torch.Generator().manual_seed(0),
                 output_type="np").images  # fmt: skip
    assert image.shape == (1, 32, 32, 3) and image.std() > 0

    # it moved: the fine-tuned student differs from the champion it started from
    from safetensors.torch import load_file

    tuned = load_file(str(model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    start = load_file(str(data.model("llcm") / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(tuned[k], start[k]) for k in start)
    teacher = ws / "models" / "teacher" / "model_index.json"
    assert teacher.is_file()

    client = MlflowClient(f"sqlite:///{data.mlflow_db}")
    version = client.get_model_version_by_alias("hooves", "champion")
    assert version.tags["solver"] == "leapfrog"
    runs = client.search_runs(
        [client.get_experiment_by_name("llcm").experiment_id],
        "tags.mlflow.runName LIKE 'finetune-hooves-%'",
    )
    names = {r.info.run_name for r in runs}
    assert names >= {"finetune-hooves-teacher-micro", "finetune-hooves-llcm-micro"}, names
    for name in ("before", "after", "loss"):
        assert Image.open(manifest["pictures"][name]).size[0] > 32


def test_generate_by_class_name_through_the_registry(finetuned, run_output, tmp_path, capsys):
    data, _ = finetuned
    assert run_output[0] == 0
    common = ["--model", "models:/hooves@champion", "--preset", "micro", "--data", str(data.root)]
    out = tmp_path / "laminitis"
    rc = main(["generate", *common, "--class", "horse_hoof_xray_laminitis", "--steps", "2",
               "--num-images", "3", "--out", str(out)])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["prompt"] == "X-ray of a horse hoof, laminitis"
    assert len(list(out.glob("[0-9][0-9][0-9].png"))) == 3

    assert main(["generate", *common, "--list-classes"]) == 0
    assert "horse_hoof_xray_healthy" in json.loads(capsys.readouterr().out)

    rc = main(["generate", *common, "--class", "zebra", "--out", str(tmp_path / "z")])
    assert rc == 2
    assert "class 'zebra' is not one of the model's" in capsys.readouterr().err


def test_finetune_rejects_a_bad_name_and_a_missing_source(finetuned, tmp_path, capsys):
    data, _ = finetuned
    common = ["--preset", "micro", "--data", str(data.root)]
    assert main(["finetune", str(tmp_path), "--name", "../escape", *common]) == 2
    assert "dataset name '../escape'" in capsys.readouterr().err
    assert main(["finetune", str(tmp_path / "nope"), "--name", "x", *common]) == 2
    assert "is not a registry source" in capsys.readouterr().err
    assert not (data.root.parent / "escape").exists()


def test_finetuned_asset_materialises_a_dynamic_partition(finetuned, run_output, tmp_path):
    """The Dagster asset: a partition added like the UI adds one, a second custom dataset
    given by run config, materialised for real; its metadata carries the pictures."""
    import dagster as dg
    from dagster_fixtures import asset_resources

    from assets.finetune import custom_datasets
    from assets.finetune import finetuned as finetuned_asset

    data, _ = finetuned
    assert run_output[0] == 0
    folder = custom_folder(tmp_path / "foals")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(custom_datasets.name, ["foals"])
    config = {"sources": [str(folder)], "species": "horse", "body_part": "hoof",
              "modality": "X-ray", "steps": 2}  # fmt: skip
    result = dg.materialize(
        [finetuned_asset],
        partition_key="foals",
        instance=instance,
        resources=asset_resources(data.root, overrides=BASE),
        run_config={"ops": {"finetuned": {"config": config}}},
    )
    assert result.success
    event = result.asset_materializations_for_node("finetuned")[0]
    assert event.partition == "foals"
    meta = event.metadata
    assert meta["registered"].value == "models:/foals@champion"
    assert "horse_hoof_xray_laminitis" in meta["classes"].value
    assert meta["after"].value.startswith("![")  # an inline picture
    assert (data.finetuned_model("foals") / "classes.json").is_file()


def test_a_killed_finetune_resumes_the_teacher_from_its_checkpoint(finetuned, run_output, tmp_path):
    """The fine-tuned teacher is killed after its first checkpoint (a real SIGKILL of
    ``python -m ops.entry finetune_teacher``); ``llcm finetune`` run again continues it."""
    from model_fixtures import kill_after_first_checkpoint

    from ops.config import DEFAULT_PARAMS, load_params
    from ops.finetune.replay import replay_ids, write_replay
    from ops.finetune.settings import with_finetune_values
    from ops.finetune.stage import teacher_params

    data, argv = finetuned
    assert run_output[0] == 0
    extra = ["finetune.replay_per_class=3", "teacher.checkpoint_every=3",
             "presets.micro.finetune.teacher_steps=40"]  # fmt: skip
    cli_params = load_params(DEFAULT_PARAMS, preset="micro", overrides=[*BASE, *extra])
    params = with_finetune_values(cli_params, name="hooves",
                                  students=["llcm"], base="models:/llcm@champion")  # fmt: skip
    ws = data.finetune_layout("hooves")
    key = write_replay(ws, data, replay_ids(data, 3, 0))
    state = kill_after_first_checkpoint("finetune_teacher", teacher_params(params, ws, key), data,
                                        tmp_path, checkpoints=ws.checkpoint_dir("teacher"))  # fmt: skip
    assert state["samples_seen"] > 0

    again = [a for a in argv if a not in ("--steps", "3")]
    for override in extra:
        again += ["--set", override]
    assert main(again) == 0
    summary = json.loads((ws.reports / "finetune.json").read_text())
    assert summary["teacher"]["resumed_from"] == 3 and summary["teacher"]["final_step"] == 40
    assert not list(ws.checkpoint_dir("teacher").glob("step-*"))  # cleared after success
