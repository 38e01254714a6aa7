"""Sources given on a command line or in a run config rather than in the registry:
``kaggle:<owner>/<slug>``, a folder of class folders, or a zip of one. Each class folder names
a disease; ``defaults`` give the other labels (species, body part, modality)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from ops.data.sources.kaggle_fetch import SLUG_RE
from ops.data.sources.registry import RegistryError, SourceSpec, load_registry


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


def resolve_source_texts(
    texts: list[str], registry_path: str | None, defaults: dict[str, str], exclude: tuple[str, ...]
) -> list[SourceSpec]:
    """SourceSpecs of SOURCE texts: registry names as registered, others ad hoc (labels from
    ``defaults``); two sources may not share a name."""
    registry = load_registry(registry_path)
    specs: list[SourceSpec] = []
    for text in texts:
        spec = registry.get(text) or adhoc_spec(text, defaults, exclude)
        if any(s.name == spec.name for s in specs):
            raise RegistryError(f"two sources would both be named {spec.name!r}; rename one")
        specs.append(spec)
    return specs
