"""``llcm ingest SOURCE... --out DIR``: fetch sources and clean them into MedImgs, outside Dagster.

SOURCE is a registry name (e.g. ``phantoms``), ``kaggle:<owner>/<slug>``, a folder of class
folders, or a zip of one. Sources not in the registry have no label mapping: each class folder
names a disease, and ``--species/--body-part/--modality`` give the other labels. The same stage
code as the Dagster assets runs, writing ``DIR/raw/`` and ``DIR/medimgs/``.
"""

from __future__ import annotations

import argparse
import json
import sys

from ops.config import add_config_args, config_from_args, stage_config
from ops.data.cleaning.build import clean_raw
from ops.data.sources.adhoc import resolve_source_texts
from ops.data.sources.kaggle_fetch import SourceFetchError
from ops.data.sources.materialize import materialize_specs
from ops.data.sources.registry import SourceSpec
from ops.layout import DataLayout


def resolve_sources(
    texts: list[str], registry_path: str | None, args: argparse.Namespace
) -> list[SourceSpec]:
    """The SourceSpecs of the command line's SOURCE arguments and label options."""
    defaults = {"species": args.species, "body_part": args.body_part, "modality": args.modality}
    return resolve_source_texts(texts, registry_path, defaults, tuple(args.exclude))


def run(args: argparse.Namespace) -> int:
    params, layout = config_from_args(args)
    out = DataLayout.from_env(args.out) if args.out else layout
    cfg = stage_config(params, "ingest")
    if args.workers is not None:
        cfg["workers"] = args.workers
    specs = resolve_sources(args.sources, cfg.get("registry"), args)
    try:
        fetched = materialize_specs(specs, out, cfg)
    except SourceFetchError as exc:
        print(f"llcm ingest: error: {exc}", file=sys.stderr)
        return 2
    for error in fetched["failures"].values():
        print(f"llcm ingest: warning: {error}", file=sys.stderr)
    cleaned = clean_raw(out, cfg, params["prompts"]["template"])
    summary = {"out": str(out.root), "raw": fetched, "medimgs": cleaned}
    print(json.dumps(summary, indent=2, default=str))
    return 1 if fetched["failures"] else 0


def register(sub) -> None:
    parser = sub.add_parser(
        "ingest",
        help="fetch sources and clean them into MedImgs (outside Dagster)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_args(parser)
    parser.add_argument(
        "--out", default=None, help="data directory to write raw/ and medimgs/ (default: --data)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="decode processes (default: ingest.workers)"
    )
    add_config_args(parser)
    parser.set_defaults(handler=run)


def add_source_args(parser: argparse.ArgumentParser) -> None:
    """SOURCE... and the labels of ad-hoc sources: shared by ``ingest`` and ``finetune``."""
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="registry name, kaggle:<owner>/<slug>, folder or zip",
    )
    parser.add_argument(
        "--species", default="human", help="species of ad-hoc sources (default: human)"
    )
    parser.add_argument("--body-part", default="body", help="body part of ad-hoc sources")
    parser.add_argument(
        "--modality", default="medical image", help="modality of ad-hoc sources, e.g. X-ray"
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip files of ad-hoc sources matching GLOB (repeatable)",
    )
