"""Images per second: LLCM at 1, 2 and 4 steps against the teacher's DDIM at 50 steps with
classifier-free guidance (2 UNet calls per step), measured side by side in one run.

    .venv/bin/python benchmarks/sampling_throughput.py [--data DIR] [--model llcm] [--batch 8]

Needs ``models/teacher`` and ``models/<model>`` (run the pipeline first). Each configuration is
timed ``--repeats`` times, interleaved round by round so that machine noise hits all alike; the
median is reported with the speed-up over the teacher.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ops.distill.sampling import generate, load_consistency_pipeline
from ops.layout import DataLayout

PROMPT = "MRI of a human brain, glioma"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--model", default="llcm")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--guidance", type=float, default=4.0)
    args = parser.parse_args()

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    layout = DataLayout.from_env(args.data)
    student = load_consistency_pipeline(layout.model(args.model))
    teacher = StableDiffusionPipeline.from_pretrained(layout.model("teacher"))
    teacher.scheduler = DDIMScheduler.from_config(
        teacher.scheduler.config, timestep_spacing="trailing"
    )
    teacher.set_progress_bar_config(disable=True)

    def run_student(steps: int) -> None:
        generate(student, PROMPT, steps=steps, guidance_scale=args.guidance, num_images=args.batch)

    def run_teacher() -> None:
        teacher(
            [PROMPT] * args.batch,
            num_inference_steps=50,
            guidance_scale=args.guidance,
            generator=torch.Generator().manual_seed(0),
        )

    configs = {f"{args.model} 1 step": lambda: run_student(1)}
    configs[f"{args.model} 2 steps"] = lambda: run_student(2)
    configs[f"{args.model} 4 steps"] = lambda: run_student(4)
    configs["teacher DDIM 50 steps, CFG"] = run_teacher
    for fn in configs.values():  # warm-up
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, fn in configs.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)

    base = args.batch / statistics.median(seconds["teacher DDIM 50 steps, CFG"])
    print(f"batch {args.batch}, torch threads {torch.get_num_threads()}, {args.repeats} rounds")
    print(f"{'configuration':32s} {'images/s':>10s} {'vs teacher':>11s}")
    for name, values in seconds.items():
        rate = args.batch / statistics.median(values)
        print(f"{name:32s} {rate:10.1f} {rate / base:10.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
