"""Images per second at Stable Diffusion 1.5's shape: the consistency student at 1, 2 and 4
steps against the teacher's DPM-Solver++ at 4 steps and DDIM at 50 steps, both with
classifier-free guidance, measured side by side in one run.

    .venv/bin/python benchmarks/sd15_throughput.py                      # CPU, batch 1
    .venv/bin/python benchmarks/sd15_throughput.py --device cuda --dtype fp16 --batch 8

Every component is SD 1.5's architecture built from its config with random weights (nothing is
downloaded): the 860 M-parameter UNet (the student's adds LCM's 256-d guidance projection), the
KL-VAE decoding 64x64x4 latents to 512x512, and CLIP ViT-L/14's text encoder (123 M), run on
random token ids of CLIP's 77-token length. Weights do not change the arithmetic, so the times
are those of the real models; the images are noise. Stock diffusers pipelines do the sampling:
``LatentConsistencyModelPipeline`` with ``LCMScheduler``, ``StableDiffusionPipeline`` with
``DPMSolverMultistepScheduler`` (2M, DPM-Solver++) and ``DDIMScheduler``, trailing spacing.

Configurations are timed ``--repeats`` rounds after a warm-up, interleaved round by round so
noise hits all alike (``--ddim-repeats`` for the slow DDIM-50 row); medians are reported with
the ratios against DPM-Solver++ 4 and DDIM-50.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)  # fmt: skip
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)  # fmt: skip
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
)  # fmt: skip
SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
LCM_W_DIM = 256  # LCM-SD1.5's time_cond_proj_dim


def build(device: str, dtype: torch.dtype) -> dict[str, object]:
    """SD 1.5-shaped components with random weights: teacher and student UNets, VAE, text."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    parts = {
        "unet": UNet2DConditionModel(**SD15_UNET),
        "student": UNet2DConditionModel(**SD15_UNET, time_cond_proj_dim=LCM_W_DIM),
        "vae": AutoencoderKL(**SD15_VAE),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
    }
    return {k: m.to(device, dtype).eval() for k, m in parts.items()}


def pipelines(parts: dict[str, object]) -> dict[str, object]:
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        LatentConsistencyModelPipeline,
        LCMScheduler,
        StableDiffusionPipeline,
    )

    common = dict(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=None,
                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    teacher = {
        name: StableDiffusionPipeline(unet=parts["unet"], scheduler=sched, **common)
        for name, sched in (
            ("ddim", DDIMScheduler(**SCHEDULE, timestep_spacing="trailing", clip_sample=False,
                                   set_alpha_to_one=False)),
            ("dpmpp", DPMSolverMultistepScheduler(**SCHEDULE, algorithm_type="dpmsolver++",
                                                  solver_order=2, timestep_spacing="trailing")),
        )
    }  # fmt: skip
    student = LatentConsistencyModelPipeline(
        unet=parts["student"], scheduler=LCMScheduler(**SCHEDULE, original_inference_steps=50),
        **common,
    )  # fmt: skip
    for pipe in [*teacher.values(), student]:
        pipe.set_progress_bar_config(disable=True)
    return {**teacher, "student": student}


def configurations(pipes, parts, batch: int, device: str) -> dict[str, Callable[[], None]]:
    """name -> one call generating ``batch`` 512x512 images, text encoding included."""
    encoder = parts["text_encoder"]

    def embeds():
        ids = torch.randint(0, SD15_TEXT["vocab_size"], (batch, 77), device=device)
        return encoder(ids)[0]

    def teacher(name: str, steps: int) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                cond, uncond = embeds(), embeds()
            pipes[name](prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=steps,
                        guidance_scale=7.5, height=512, width=512, output_type="np")  # fmt: skip

        return run

    def student(steps: int) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                cond = embeds()
            pipes["student"](prompt_embeds=cond, num_inference_steps=steps, guidance_scale=8.0,
                             height=512, width=512, output_type="np")  # fmt: skip

        return run

    return {
        "student 1 step": student(1),
        "student 2 steps": student(2),
        "student 4 steps": student(4),
        "teacher DPM-Solver++ 4 steps, CFG": teacher("dpmpp", 4),
        "teacher DDIM 50 steps, CFG": teacher("ddim", 50),
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ddim-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype_name = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]

    parts = build(args.device, dtype)
    configs = configurations(pipelines(parts), parts, args.batch, args.device)
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    slow = "teacher DDIM 50 steps, CFG"
    for name, fn in configs.items():  # warm-up (kernels, allocator); DDIM's first step suffices
        if name != slow:
            fn()
    for round_ in range(max(args.repeats, args.ddim_repeats)):
        for name, fn in configs.items():
            if round_ >= (args.ddim_repeats if name == slow else args.repeats):
                continue
            sync(args.device)
            start = time.perf_counter()
            fn()
            sync(args.device)
            seconds[name].append(time.perf_counter() - start)
            print(f"  {name}: {seconds[name][-1]:.2f} s", flush=True)

    rates = {name: args.batch / statistics.median(v) for name, v in seconds.items()}
    dpm, ddim = rates["teacher DPM-Solver++ 4 steps, CFG"], rates[slow]
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"\n{where}, {dtype_name}, batch {args.batch}, 512x512, torch threads "
          f"{torch.get_num_threads()}, rounds {args.repeats} (DDIM-50: {args.ddim_repeats})")  # fmt: skip
    print(
        f"{'configuration':36s} {'images/s':>10s} {'s/image':>9s} {'vs DPM++4':>10s} {'vs DDIM-50':>11s}"
    )
    for name, rate in rates.items():
        print(f"{name:36s} {rate:10.3f} {1 / rate:9.2f} {rate / dpm:9.2f}x {rate / ddim:10.1f}x")
    if args.json:
        record = {"device": where, "dtype": dtype_name, "batch": args.batch, "seconds": seconds,
                  "images_per_second": rates}  # fmt: skip
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
