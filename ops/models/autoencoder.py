"""Stage ``autoencoder``: the frozen base components in ``models/base/``.

``models/base/`` is a partial diffusers pipeline layout (``vae/``, ``tokenizer/``,
``text_encoder/``, safetensors weights) that the latents and teacher stages build on:

- ``sd15``: SD 1.5's VAE, tokenizer and CLIP text encoder, as they are.
- ``tiny``/``micro``: a CLIP-compatible BPE tokenizer trained on the prompts, a randomly
  initialised CLIP text encoder (see ``ops.models.presets.build_text_encoder``), trained for
  ``text.separation_steps`` to pull the prompts' embeddings apart (``ops.models.text_separation``)
  and then frozen, and an
  ``AutoencoderKL`` trained here on the MedImgs train split with SD's KL-regularised objective.

Either way the VAE's reconstruction PSNR on the test split is measured, a grid of originals
over reconstructions is saved, and everything is logged to one MLflow run. Whether the VAE
keeps the diagnosis (the domain classifier on originals and reconstructions) is the
``autoencoder_fidelity`` stage, ``ops.eval.vae_fidelity``.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch

from ops.config import stage_config
from ops.layout import DataLayout
from ops.models.perceptual import perceptual_distance, perceptual_net
from ops.models.presets import (
    build_text_encoder,
    build_tokenizer,
    build_vae,
    count_parameters,
    is_pretrained,
    vae_downsample_factor,
)
from ops.models.text_separation import family_pairs, separate_prompts, separation_report
from ops.models.vae_loss import reconstruction_loss
from ops.tracking.runs import MlflowRun, resume_and_start_run
from ops.training.batches import GlobalBatchPlan
from ops.training.checkpoint import CheckpointStore, atomic_directory
from ops.training.fingerprint import config_fingerprint
from ops.training.grids import save_grid, tensor_to_pil
from ops.training.image_data import (
    base_training_rows,
    iter_image_batches,
    load_images,
    read_manifest,
    rows_hash,
    split_rows,
    to_model_range,
)
from ops.training.launch import run_trainer
from ops.training.loop import LoopSettings, publish_and_clear, train_loop
from ops.training.runtime import (
    create_accelerator,
    on_main_process,
    seed_everything,
    torch_threads,
)

STAGE = "autoencoder"
BASE_MODEL = "base"
GRID_FILE = "reconstructions.png"
FAMILY_FIELDS = ("species", "body_part", "modality")


def autoencoder_config(params: dict[str, Any]) -> dict[str, Any]:
    """The stage's config plus the image resolution of the ingest preset."""
    cfg = stage_config(params, STAGE)
    cfg["resolution"] = int(stage_config(params, "ingest")["resolution"])
    return cfg


def build_autoencoder(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Write ``models/base/`` (tokenizer, text encoder, VAE); return the stage summary."""
    cfg = autoencoder_config(params)
    text = on_main_process(lambda: save_text_components(params, layout, read_manifest(layout)))
    if is_pretrained(cfg):
        summary = on_main_process(lambda: install_pretrained_vae(params, layout))
    else:
        summary = run_trainer(STAGE, train_autoencoder, params, layout, cfg)
    return {**summary, **text}


# --- text components ---------------------------------------------------------------------------
def save_text_components(
    params: dict[str, Any], layout: DataLayout, manifest: pd.DataFrame
) -> dict[str, Any]:
    """Build (or load) tokenizer and frozen text encoder; save both under ``models/base``.

    The tokenizer's vocabulary is learned from every manifest prompt, held-out families
    included: that is vocabulary, not training data, and lets a later fine-tune on a held-out
    family use whole-word tokens.
    """
    cfg = stage_config(params, "text")
    base = layout.model(BASE_MODEL)
    prompts = sorted(set(manifest["prompt"]))
    with atomic_directory(base / "tokenizer") as tok_dir:
        tokenizer = build_tokenizer(cfg, prompts, tok_dir)
        tokenizer.save_pretrained(tok_dir)
    encoder = build_text_encoder(cfg, tokenizer, seed=int(cfg["seed"]))
    separation = train_prompt_separation(cfg, encoder, tokenizer, manifest)
    with atomic_directory(base / "text_encoder") as enc_dir:
        encoder.save_pretrained(enc_dir, safe_serialization=True)
    return {
        "text_source": "pretrained" if is_pretrained(cfg) else "train",
        "vocab_size": len(tokenizer),
        "text_encoder_parameters": count_parameters(encoder),
        "prompts": len(prompts),
        **separation,
    }


def train_prompt_separation(
    cfg: dict[str, Any], encoder, tokenizer, manifest: pd.DataFrame
) -> dict[str, Any]:
    """Measure how far apart the prompts' embeddings are; for a built (not pretrained) encoder
    with ``separation_steps`` > 0, first train them apart (``ops.models.text_separation``).

    Prompts are every manifest prompt plus ``""`` (the unconditional input); family pairs are
    prompts with the same species, body part and modality.
    """
    labels = manifest.drop_duplicates("prompt").sort_values("prompt")
    prompts = [""] + labels["prompt"].tolist()
    pairs = [
        (i + 1, j + 1) for i, j in family_pairs(labels[list(FAMILY_FIELDS)].to_dict("records"))
    ]
    before = separation_report(encoder, tokenizer, prompts, pairs)
    steps = 0 if is_pretrained(cfg) else int(cfg.get("separation_steps", 0))
    if steps <= 0:
        return {f"text_{k}": v for k, v in before.items()}
    losses = separate_prompts(
        encoder,
        tokenizer,
        prompts,
        steps=steps,
        learning_rate=float(cfg.get("separation_learning_rate", 1e-3)),
        seed=int(cfg["seed"]),
    )
    after = separation_report(encoder, tokenizer, prompts, pairs)
    return {
        **{f"text_{k}": v for k, v in after.items()},
        **{f"text_{k}_untrained": v for k, v in before.items()},
        "text_separation_steps": steps,
        "text_separation_final_loss": losses[-1],
    }


# --- VAE training ------------------------------------------------------------------------------
class VaeObjective(torch.nn.Module):
    """SD's first-stage objective without its GAN term; its LPIPS term, when
    ``perceptual_weight`` > 0, on a network trained here (``ops.models.perceptual``).

    LDM (Rombach et al. 2022) sums the L1 reconstruction error over pixels and the KL over
    latent entries per sample and weighs the KL by ``kl_weight`` (1e-6). Both are divided by
    the pixel count here, which keeps that balance while the loss reads as a mean absolute
    error. The tiny weight keeps latents close to deterministic while bounding their scale.
    Optional terms (``ops.models.vae_loss.reconstruction_loss``): a squared error, which unlike L1
    does not settle for the median and so keeps rare bright pixels, and an L1 on image
    gradients, which weighs the edges of small findings. Defaults: SD's L1 alone.
    Wrapping encode + decode in one ``forward`` lets DDP see a single forward call.
    """

    def __init__(
        self,
        vae: torch.nn.Module,
        kl_weight: float,
        l1_weight: float = 1.0,
        l2_weight: float = 0.0,
        gradient_weight: float = 0.0,
        perceptual: torch.nn.Module | None = None,
        perceptual_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight
        self.weights = {
            "l1_weight": l1_weight,
            "l2_weight": l2_weight,
            "gradient_weight": gradient_weight,
        }
        self.perceptual = perceptual  # frozen: no parameter of it trains
        self.perceptual_weight = perceptual_weight

    def forward(self, images: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(images).latent_dist
        latents = posterior.mean + posterior.std * eps  # reparameterised sample
        recon = self.vae.decode(latents).sample
        pixels = images[0].numel()
        kl = posterior.kl().mean() / pixels
        loss = reconstruction_loss(recon, images, **self.weights) + self.kl_weight * kl
        if self.perceptual is not None and self.perceptual_weight:
            loss = loss + self.perceptual_weight * perceptual_distance(
                self.perceptual, recon.float(), images
            )
        return loss


def train_autoencoder(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Trainer entrypoint (``python -m ops.entry autoencoder``): train, save, evaluate.

    Runs in one or several processes (global batch ``batch_size``, split evenly), resumes from
    ``checkpoints/autoencoder`` and clears it after success.
    """
    cfg = autoencoder_config(params)
    with torch_threads(cfg.get("threads")):
        return _train_autoencoder(cfg, params, layout)


def _train_autoencoder(cfg: dict[str, Any], params: dict[str, Any], layout: DataLayout) -> dict:
    accelerator = create_accelerator(str(cfg.get("mixed_precision", "no")))
    seed_everything(int(cfg["seed"]))
    manifest = read_manifest(layout)
    rows = base_training_rows(manifest)
    images = load_images(layout, rows)
    vae = build_vae(cfg)
    side = cfg["resolution"] // vae_downsample_factor(vae)
    latent_shape = (int(vae.config.latent_channels), side, side)
    # one rank trains the feature network, every rank gets the same one
    perceptual, perceptual_summary = on_main_process(lambda: perceptual_net(cfg, rows, images))
    objective = VaeObjective(
        vae,
        float(cfg["kl_weight"]),
        l1_weight=float(cfg.get("l1_weight", 1.0)),
        l2_weight=float(cfg.get("l2_weight", 0.0)),
        gradient_weight=float(cfg.get("gradient_weight", 0.0)),
        perceptual=perceptual,
        perceptual_weight=float(cfg.get("perceptual_weight", 0.0)),
    )
    optimizer = torch.optim.AdamW(vae.parameters(), lr=float(cfg["learning_rate"]))
    objective, optimizer = accelerator.prepare(objective, optimizer)

    plan = GlobalBatchPlan(
        len(rows),
        int(cfg["batch_size"]),
        int(cfg["seed"]),
        accelerator.process_index,
        accelerator.num_processes,
    )
    store = CheckpointStore(layout.checkpoint_dir(STAGE), config_fingerprint(cfg, rows_hash(rows)))
    resume, run = resume_and_start_run(store, layout, params, STAGE, accelerator)
    run.log_params({**cfg, "train_images": len(rows)})
    device = accelerator.device

    def loss_fn(batch):
        x = to_model_range(images[batch.indices]).to(device)
        return objective(x, batch.randn(*latent_shape).to(device))

    result = train_loop(
        accelerator,
        objective,
        optimizer,
        loss_fn,
        plan,
        LoopSettings.from_config(cfg, STAGE),
        store,
        run=run,
        resume=resume,
    )
    summary: dict[str, Any] = {
        "source": "train",
        "vae_parameters": count_parameters(vae),
        "train_images": len(rows),
        **perceptual_summary,
        **result.as_dict(),
    }

    def publish() -> dict[str, Any]:
        trained = accelerator.unwrap_model(objective).vae
        return finish_vae(trained, cfg, layout, manifest, run, fit_scale=True)

    return {**summary, **publish_and_clear(accelerator, store, publish)}


def install_pretrained_vae(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """sd15: SD's VAE as is (its own ``scaling_factor``), evaluated and saved to the base."""
    cfg = autoencoder_config(params)
    vae = build_vae(cfg)
    if torch.cuda.is_available():
        vae = vae.to("cuda")
    run = MlflowRun.start(layout, params, STAGE)
    run.log_params(cfg)
    summary = {"source": "pretrained", "vae_parameters": count_parameters(vae)}
    summary.update(finish_vae(vae, cfg, layout, read_manifest(layout), run, fit_scale=False))
    return summary


# --- evaluation and saving ---------------------------------------------------------------------
@torch.no_grad()
def latent_std(vae, layout: DataLayout, rows: pd.DataFrame, batch_size: int) -> float:
    """Standard deviation of the posterior means over ``rows`` (SD's scale-factor recipe)."""
    device = next(vae.parameters()).device
    total, total_sq, count = 0.0, 0.0, 0
    for _, batch in iter_image_batches(layout, rows, batch_size):
        z = vae.encode(to_model_range(batch).to(device)).latent_dist.mean.double()
        total += z.sum().item()
        total_sq += (z**2).sum().item()
        count += z.numel()
    mean = total / count
    return math.sqrt(max(total_sq / count - mean**2, 1e-12))


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor) -> torch.Tensor:
    """Decode the posterior mean: the deterministic reconstruction the latents stage implies."""
    return vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)


@torch.no_grad()
def reconstruction_psnr(vae, layout: DataLayout, rows: pd.DataFrame, batch_size: int) -> float:
    """Mean PSNR in dB over ``rows`` (pixel values in [0, 1])."""
    device = next(vae.parameters()).device
    psnrs = []
    for _, batch in iter_image_batches(layout, rows, batch_size):
        x = to_model_range(batch).to(device)
        mse = (((reconstruct(vae, x) - x) / 2) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        psnrs.append(10 * torch.log10(1.0 / mse).cpu())
    return float(torch.cat(psnrs).mean())


def grid_rows(rows: pd.DataFrame, limit: int = 8) -> pd.DataFrame:
    """One image per class (up to ``limit`` classes) for a reconstruction grid."""
    return rows.drop_duplicates("class_name").head(limit)


def finish_vae(
    vae,
    cfg: dict[str, Any],
    layout: DataLayout,
    manifest: pd.DataFrame,
    run: MlflowRun,
    *,
    fit_scale: bool,
) -> dict[str, Any]:
    """Fit the scaling factor (trained VAE), save ``base/vae``, measure PSNR, log, finish run.

    The scaling factor makes the latents the diffusion model sees unit-variance, as SD's
    0.18215 does for its VAE: ``1 / std`` of the train split's posterior means (the same
    quantity the latents stage stores), over at most ``eval_images`` images.
    """
    vae = vae.eval()
    limit = int(cfg.get("eval_images", 256))
    batch_size = int(cfg.get("eval_batch_size", 16))
    base = layout.model(BASE_MODEL)
    if fit_scale:
        train = base_training_rows(manifest).head(limit)
        vae.register_to_config(scaling_factor=1.0 / latent_std(vae, layout, train, batch_size))
    with atomic_directory(base / "vae") as vae_dir:
        vae.save_pretrained(vae_dir, safe_serialization=True)
    summary: dict[str, Any] = {"scaling_factor": float(vae.config.scaling_factor)}
    test = split_rows(manifest, "test")
    if len(test):
        psnr = reconstruction_psnr(vae, layout, test.head(limit), batch_size)
        originals = to_model_range(load_images(layout, grid_rows(test)))
        recons = reconstruct(vae, originals.to(next(vae.parameters()).device)).cpu()
        grid = save_grid(
            base / GRID_FILE,
            tensor_to_pil(torch.cat([originals, recons])),
            cols=len(originals),
            row_labels=["original", "reconstruction"],
        )
        summary.update(psnr_db=psnr, grid=str(grid), test_images=min(limit, len(test)))
        run.log_metrics({"psnr_db": psnr}, step=0)
        run.log_artifact(grid, "samples")
    run.log_metrics({"scaling_factor": summary["scaling_factor"]}, step=0)
    run.log_artifacts(base, "model")
    run.finish()
    summary["mlflow_run_id"] = run.run_id
    summary["model_dir"] = str(base)
    return summary
