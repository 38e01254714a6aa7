"""What a person looks at after a fine-tune: the custom classes before and after, the losses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ops.finetune.settings import finetune_config


def before_after_grids(
    base_dir: Path, tuned_dir: Path, classes: dict[str, str], out: Path, params: dict[str, Any]
) -> dict[str, str]:
    """One grid per model: a row per custom class, a column per step count of
    ``finetune.grid_steps``, the same seed in both, so each tile pair differs only by the
    fine-tune."""
    from ops.distill.stage import sample_step_grid

    cfg = finetune_config(params)
    steps = [int(s) for s in cfg["grid_steps"]]
    guidance = float(params["sampling"]["guidance_scale"])
    seed = int(cfg["seed"])
    paths = {}
    for label, directory in (("before", base_dir), ("after", tuned_dir)):
        path = out / f"{label}.png"
        sample_step_grid(
            directory, classes, guidance_scale=guidance, seed=seed, steps=steps, path=path
        )
        paths[label] = str(path)
    return paths


def loss_picture(teacher: dict[str, Any], students: dict[str, dict[str, Any]], path: Path) -> Path:
    """The training loss of the fine-tuned teacher and of each student against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {"teacher": teacher.get("loss_curve") or []}
    curves.update({name: s.get("loss_curve") or [] for name, s in students.items()})
    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 2.6), squeeze=False)
    for ax, (name, curve) in zip(axes[0], curves.items(), strict=True):
        if curve:
            steps, losses = zip(*curve, strict=True)
            ax.plot(steps, losses, lw=1.2)
        ax.set_title(f"{name} (fine-tune)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
