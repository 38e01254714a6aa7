"""``llcm audit``: a memorisation audit of any folder of images against the MedImgs train split.

    llcm audit samples/ --out audit.json [--pairs closest.png] [--percentile 1]

writes REPORT.json with ``images`` (file, nearest_train_image, distance, memorised, ...),
``skipped`` (files that do not decode, with the reason) and ``summary`` (threshold, percentile,
n, n_memorised, share_memorised, per class where a file's folder names a MedImgs class), and
prints the summary. An image is ``memorised`` when it is closer to a training image than all
but ``--percentile`` per cent of the held-out real test images are (docs/privacy.md). Nothing
is written but ``--out`` and, if asked, ``--pairs``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ops.config import add_config_args, config_from_args


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from ops.privacy.audit import audit_folder
    from ops.privacy.bank import calibrate, train_bank
    from ops.privacy.normalise import PixelSpec
    from ops.privacy.pairs import save_closest_pairs

    params, layout = config_from_args(args)
    folder = Path(args.dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory")
    cfg = params.get("privacy") or {}  # optional section; the defaults are PixelSpec's
    percentile = args.percentile if args.percentile is not None else cfg.get("percentile", 1.0)
    spec = PixelSpec.from_config(cfg)
    out = Path(args.out)
    pairs = Path(args.pairs) if args.pairs else None
    bank = train_bank(layout, spec)
    calibration = calibrate(layout, bank, float(percentile), device=args.device)
    exclude = [out] + ([pairs] if pairs else [])
    report = audit_folder(folder, bank, calibration, exclude=exclude, device=args.device)
    if pairs is not None:

        def query(record: dict) -> Image.Image:
            with Image.open(folder / record["file"]) as im:
                return im.convert("RGB")

        save_closest_pairs(report["images"], query, layout, pairs)
        report["summary"]["pairs_picture"] = str(pairs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"report": str(out), **report["summary"]}, indent=2))
    return 0


def register(sub) -> None:
    parser = sub.add_parser(
        "audit", help="flag images that copy MedImgs training images (memorisation audit)"
    )
    parser.add_argument("dir", help="folder of images to audit (searched recursively)")
    parser.add_argument("--out", required=True, help="REPORT.json to write")
    parser.add_argument("--pairs", default=None, help="also save the closest pairs as this PNG")
    parser.add_argument(
        "--percentile",
        type=float,
        default=None,
        help="flag images closer than this percentile of held-out real images (default 1)",
    )
    parser.add_argument("--device", default=None, help="torch device for the search (default cpu)")
    add_config_args(parser)
    parser.set_defaults(handler=run)
