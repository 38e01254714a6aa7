"""``llcm ingest SOURCE... --out DIR``: fetch sources and clean them into MedImgs, outside Dagster.

SOURCE is a registry name (e.g. ``phantoms``), ``kaggle:<owner>/<slug>``, a folder of class
folders, or a zip of one. Sources not in the registry have no label mapping: each class folder
names a disease, and ``--species/--body-part/--modality`` give the other labels. The same stage
code as the Dagster assets runs, writing ``DIR/raw/`` and ``DIR/medimgs/``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from pathlib import Path

from ops.config import add_config_args, config_from_args, stage_config
from ops.data.cleaning.build import clean_raw
from ops.data.sources.kaggle_fetch import SLUG_RE, SourceFetchError
from ops.data.sources.materialize import materialize_specs
from ops.data.sources.registry import RegistryError, SourceSpec, load_registry
from ops.layout import DataLayout


def source_name(text: str) -> str:
    """A registry-style name for an ad-hoc source: ``Chest X-Rays.zip`` -> ``chest_x-rays``."""
    name = re.sub(r"[^a-z0-9_.-]+", "_", text.lower()).strip("_.-")
    return name or "source"


def adhoc_spec(text: str, defaults: dict[str, str], exclude: tuple[str, ...]) -> SourceSpec:
    """A SourceSpec for a command-line SOURCE that is not a registry name."""
    if text.startswith("kaggle:"):
        slug = text.removeprefix("kaggle:")
        if not SLUG_RE.match(slug):
            raise RegistryError(f"{text!r}: expected kaggle:<owner>/<dataset>")
        kind, location, name = "kaggle", slug, source_name(slug.replace("/", "__"))
    else:
        path = Path(text).expanduser().resolve()
        if path.is_dir():
            kind, name = "folder", source_name(path.name)
        elif path.is_file() and zipfile.is_zipfile(path):
            kind, name = "zip", source_name(path.stem)
        elif path.exists():
            raise RegistryError(f"{text!r} is neither a folder nor a zip archive")
        else:
            raise RegistryError(
                f"{text!r} is not a registry source, kaggle:<owner>/<slug>, a folder or a zip"
            )
        location = str(path)
    return SourceSpec(
        name=name,
        kind=kind,
        location=location,
        license_note="given on the command line; check its terms",
        default_labels=defaults,
        exclude=exclude,
    )


def resolve_sources(
    texts: list[str], registry_path: str | None, args: argparse.Namespace
) -> list[SourceSpec]:
    registry = load_registry(registry_path)
    defaults = {"species": args.species, "body_part": args.body_part, "modality": args.modality}
    specs: list[SourceSpec] = []
    for text in texts:
        spec = registry.get(text) or adhoc_spec(text, defaults, tuple(args.exclude))
        if any(s.name == spec.name for s in specs):
            raise RegistryError(f"two sources would both be named {spec.name!r}; rename one")
        specs.append(spec)
    return specs


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
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="registry name, kaggle:<owner>/<slug>, folder or zip",
    )
    parser.add_argument(
        "--out", default=None, help="data directory to write raw/ and medimgs/ (default: --data)"
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
    parser.add_argument(
        "--workers", type=int, default=None, help="decode processes (default: ingest.workers)"
    )
    add_config_args(parser)
    parser.set_defaults(handler=run)
