"""Teacher training throughput (samples/s) and VAE encode throughput (images/s), tiny sizes.

    .venv/bin/python benchmarks/teacher_throughput.py [--preset tiny] [--steps 10] [--threads N]

Builds the preset's VAE and UNet from config (random weights, random inputs: no data needed)
and times what the stages repeat: one teacher optimisation step (forward, backward, clip,
AdamW; the same code path as ``ops.models.teacher``: noise, timestep, ``add_noise``, epsilon MSE) and
one VAE encode of a batch (``ops.models.latents``). Reports wall time and process CPU time, because
on a shared machine the wall time measures the neighbours as much as the code.
"""

from __future__ import annotations

import argparse
import time


def timed(fn, repeats: int) -> tuple[float, float]:
    """Mean (wall, cpu) seconds per call after one warm-up call."""
    fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from ops.config import load_params, stage_config
    from ops.models.presets import build_unet, build_vae, count_parameters, ddpm_scheduler

    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(preset=args.preset)
    resolution = int(stage_config(params, "ingest")["resolution"])
    vae_cfg = {**stage_config(params, "autoencoder"), "resolution": resolution}
    text_cfg, teacher_cfg = stage_config(params, "text"), stage_config(params, "teacher")
    torch.manual_seed(0)

    vae = build_vae(vae_cfg).eval()
    encode_batch = int(stage_config(params, "latents")["encode_batch_size"])
    images = torch.rand(encode_batch, 3, resolution, resolution) * 2 - 1
    with torch.no_grad():
        latent = vae.encode(images[:1]).latent_dist.mean
        wall, cpu = timed(lambda: vae.encode(images).latent_dist.mean, args.steps)
    print(
        f"VAE encode   {count_parameters(vae) / 1e6:6.2f} M params  batch {encode_batch:4d}  "
        f"{encode_batch / wall:8.1f} images/s  ({wall:.3f} s wall, {cpu:.3f} s cpu per batch)"
    )

    channels, side = latent.shape[1], latent.shape[-1]
    unet = build_unet(
        teacher_cfg,
        sample_size=side,
        in_channels=channels,
        cross_attention_dim=int(text_cfg.get("hidden_size", 768)),
    ).train()
    batch = int(teacher_cfg["batch_size"])
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    schedule = ddpm_scheduler()
    latents = torch.randn(batch, channels, side, side)
    context = torch.randn(batch, int(text_cfg["max_length"]), unet.config.cross_attention_dim)

    def train_step() -> None:
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,))
        pred = unet(schedule.add_noise(latents, noise, t), t, encoder_hidden_states=context)
        F.mse_loss(pred.sample, noise).backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    wall, cpu = timed(train_step, args.steps)
    print(
        f"teacher step {count_parameters(unet) / 1e6:6.2f} M params  batch {batch:4d}  "
        f"{batch / wall:8.1f} samples/s ({wall:.3f} s wall, {cpu:.3f} s cpu per step; "
        f"latents {channels}x{side}x{side}, {torch.get_num_threads()} threads)"
    )
    steps = int(teacher_cfg["steps"])
    print(f"-> {steps} teacher steps take about {steps * wall / 60:.1f} min at this speed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
