"""``llcm generate``: images from a distilled consistency model, by registry alias or directory.

    llcm generate --model models:/llcm@champion --prompt "chest x-ray of a human chest, healthy" \\
        --steps 4 --num-images 8 --seed 0 --guidance 4 --out samples/
    llcm generate --model models:/dog_xray@champion --class dog_thorax_xray_cardiomegaly \\
        --steps 4 --num-images 8 --out samples/

``--class`` looks the prompt up in the class table saved with the model (``classes.json``, the
training prompt of each class); ``--list-classes`` prints that table.

writes ``000.png`` ... and ``grid.png`` into ``--out`` and prints a JSON summary. ``--model`` is
``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a saved pipeline directory;
``--guidance`` is diffusers' guidance_scale (the distilled w + 1), default
``sampling.guidance_scale``; ``--gamma`` samples with TCD at that stochasticity (0: deterministic,
1: LCM-like) instead of the model's own sampler.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ops.config import add_config_args, config_from_args


def run(args: argparse.Namespace) -> int:
    from ops.distill.registry import resolve_model_uri
    from ops.distill.samplers import check_gamma
    from ops.distill.sampling import generate, load_consistency_pipeline
    from ops.training.grids import image_grid
    from ops.training.samples import read_class_table

    _quiet_loading()
    params, layout = config_from_args(args)
    if args.out is None and not args.list_classes:
        raise ValueError("--out is required to write images")
    if args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    if args.num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {args.num_images}")
    if args.gamma is not None:
        check_gamma(args.gamma)  # before any model is loaded
    guidance = args.guidance
    if guidance is None:
        guidance = float((params.get("sampling") or {}).get("guidance_scale", 4.0))
    model_dir = resolve_model_uri(args.model, layout, params)
    if args.list_classes:
        print(json.dumps(read_class_table(model_dir), indent=2))
        return 0
    prompt = prompt_for(args, model_dir)
    pipe = load_consistency_pipeline(model_dir, device=args.device)
    if args.steps > pipe.original_steps:
        raise ValueError(
            f"--steps {args.steps} exceeds the model's original_inference_steps "
            f"{pipe.original_steps} (= 1000/k)"
        )
    images, _ = generate(
        pipe,
        prompt,
        steps=args.steps,
        guidance_scale=guidance,
        seed=args.seed,
        num_images=args.num_images,
        height=args.height,
        width=args.width,
        gamma=args.gamma,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = out / f"{i:03d}.png"
        image.save(path)
        paths.append(str(path))
    grid = out / "grid.png"
    image_grid(images, pad=0).save(grid)
    summary = {
        "model": args.model,
        "pipeline": str(model_dir),
        "class": args.class_name,
        "prompt": prompt,
        "steps": args.steps,
        "guidance_scale": guidance,
        "gamma": args.gamma,
        "seed": args.seed,
        "images": paths,
        "grid": str(grid),
    }
    print(json.dumps(summary, indent=2))
    return 0


def prompt_for(args: argparse.Namespace, model_dir) -> str:
    """``--prompt`` as given, or the prompt of ``--class`` from the model's class table."""
    from ops.training.samples import read_class_table

    if args.prompt is not None:
        return args.prompt
    if args.class_name is None:
        raise ValueError("give --prompt or --class (or --list-classes)")
    table = read_class_table(model_dir)
    if not table:
        raise ValueError(f"{model_dir} has no class table (classes.json): use --prompt")
    if args.class_name not in table:
        raise ValueError(f"class {args.class_name!r} is not one of the model's: {', '.join(table)}")
    return table[args.class_name]


def _quiet_loading() -> None:
    """No per-file progress bars while loading a few small components: stderr is for errors."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def register(sub) -> None:
    parser = sub.add_parser(
        "generate", help="generate images with a distilled consistency model (registry or dir)"
    )
    parser.add_argument(
        "--model",
        required=True,
        help="models:/<name>@<alias>, models:/<name>/<version>, or a saved pipeline directory",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", default=None, help="text prompt")
    what.add_argument(
        "--class", dest="class_name", default=None, help="class name from the model's class table"
    )
    what.add_argument(
        "--list-classes", action="store_true", help="print the model's class table and exit"
    )
    parser.add_argument("--steps", type=int, default=4, help="consistency steps (default 4)")
    parser.add_argument("--num-images", type=int, default=1, help="images to generate")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance scale as in diffusers (= distilled w + 1; default sampling.guidance_scale)",
    )
    parser.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="sample with TCD at this gamma in [0, 1] (default: the model's own sampler)",
    )
    parser.add_argument("--height", type=int, default=None, help="image height (default: model's)")
    parser.add_argument("--width", type=int, default=None, help="image width (default: model's)")
    parser.add_argument("--out", default=None, help="output directory for the PNGs and grid")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    add_config_args(parser)
    parser.set_defaults(handler=run)
