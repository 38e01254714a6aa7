"""The consistency loss of trained students by timestep bucket, side by side in one run.

    .venv/bin/python benchmarks/loss_by_timestep.py [--data DIR] [--models llcm llcm_long]
        [--buckets 5] [--set distill.variants={long: {steps: 1000}}]

Each model is measured with its own distillation config (``ops.distill.ablation.
student_config``: k, solver, phases) on the same fixed batch of training latents, the same
noise and the same w (``ops.distill.diagnostics``). ``llcm_dmd`` is measured with the solver
of the student it started from. Prints one row per model, one column per bucket of t.
"""

from __future__ import annotations

import argparse

from ops.config import load_params, stage_config
from ops.distill.ablation import student_config
from ops.distill.consistency import solver_for_model
from ops.distill.diagnostics import loss_by_timestep
from ops.layout import DataLayout
from ops.training.latent_data import LatentDataset


def model_config(model: str, params: dict) -> tuple[dict, str]:
    """(distill config, the model whose solver it is measured with)."""
    if model == "llcm_dmd":
        from ops.distill.dmd_stage import dmd_config

        cfg = dmd_config(params)
        return cfg, str(cfg["init_from"])
    return student_config(model, stage_config(params, "distill")), model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--models", nargs="+", default=["llcm"])
    parser.add_argument("--buckets", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel

    torch.set_num_threads(1)
    params = load_params(overrides=args.overrides)
    layout = DataLayout.from_env(args.data)
    teacher = UNet2DConditionModel.from_pretrained(layout.model("teacher") / "unet").eval()
    alphas = DDIMScheduler.from_pretrained(layout.model("teacher") / "scheduler").alphas_cumprod
    data = LatentDataset.load(layout.latents)
    table = {}
    for model in args.models:
        cfg, solver_of = model_config(model, params)
        student = UNet2DConditionModel.from_pretrained(layout.model(model) / "unet").eval()
        table[model] = loss_by_timestep(
            student, teacher, solver_for_model(solver_of, cfg), data, cfg, alphas,
            buckets=args.buckets, batch_size=args.batch,
        )  # fmt: skip
    first = next(iter(table.values()))
    heads = [f"t {row['t_low']}-{row['t_high']}" for row in first]
    print("| model | " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * len(heads))
    for model, rows in table.items():
        print(f"| {model} | " + " | ".join(f"{row['loss']:.4f}" for row in rows) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
