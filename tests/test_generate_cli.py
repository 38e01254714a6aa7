"""``llcm generate``: by registry alias and by directory; user errors are one line, exit 2."""

from __future__ import annotations

import json

import pytest
from micro_sd import IMAGE_SIZE, micro_registry
from PIL import Image

from pipeline.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return micro_registry(tmp_path_factory)


def generate(store, model, out, *extra):
    argv = ["generate", "--model", str(model), "--prompt", "brain mri of a human head, glioma"]
    argv += ["--out", str(out), "--preset", "micro", "--data", str(store["layout"].root)]
    return main(argv + list(extra))


def test_generate_from_the_champion_alias(store, tmp_path, capsys):
    out = tmp_path / "samples"
    rc = generate(store, "models:/llcm@champion", out, "--steps", "4", "--num-images", "8",
                  "--seed", "0", "--guidance", "4")  # fmt: skip
    assert rc == 0
    pngs = sorted(out.glob("[0-9][0-9][0-9].png"))
    assert len(pngs) == 8
    assert Image.open(pngs[0]).size == (IMAGE_SIZE, IMAGE_SIZE)
    assert Image.open(out / "grid.png").size == (3 * IMAGE_SIZE, 3 * IMAGE_SIZE)
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["steps"] == 4 and summary["guidance_scale"] == 4.0 and len(summary["images"]) == 8
    )
    assert "mlflow/downloads/llcm/v1" in summary["pipeline"]

    # Same seed, same bytes; a local directory works as --model too.
    again = tmp_path / "again"
    assert generate(store, store["model_dir"], again, "--steps", "4", "--num-images", "8",
                    "--seed", "0", "--guidance", "4") == 0  # fmt: skip
    assert all(
        (out / p.name).read_bytes() == p.read_bytes() for p in again.glob("[0-9][0-9][0-9].png")
    )

    # --gamma samples the same model with TCD: other images, the gamma in the summary
    capsys.readouterr()
    tcd = tmp_path / "tcd"
    assert generate(store, store["model_dir"], tcd, "--steps", "4", "--num-images", "8",
                    "--seed", "0", "--guidance", "4", "--gamma", "0.3") == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["gamma"] == 0.3
    assert (tcd / "000.png").read_bytes() != (out / "000.png").read_bytes()


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("models:/missing@champion", [], "no registered model 'missing'"),
        ("models:/llcm@gold", [], "has no alias 'gold'"),
        ("MISSING_DIR", [], "no model"),
        ("models:/llcm@champion", ["--steps", "0"], "--steps must be at least 1"),
        (
            "models:/llcm@champion",
            ["--steps", "51"],
            "exceeds the model's original_inference_steps 50",
        ),
        ("models:/llcm@champion", ["--gamma", "1.5"], "gamma must lie in [0, 1]"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(store, tmp_path, capsys, model, extra, message):
    model = str(tmp_path / "nope") if model == "MISSING_DIR" else model
    rc = generate(store, model, tmp_path / "out", *extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("llcm generate: error:") and message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
