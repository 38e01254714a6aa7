"""The source registry (``configs/sources.yaml``): where raw images come from and what they show.

A source maps its own class labels (a folder name such as ``PNEUMONIA`` or a CSV label such as
``mel``) to the four label fields of the manifest (species, body part, modality, disease). The
mapping lives in configuration rather than code so that adding a dataset is editing YAML.
A copy of every materialised source's spec is written next to the raw files
(``raw/sources.json``), so cleaning reads exactly the mapping the files were fetched with.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ops.config import REPO_ROOT, ConfigError

KINDS = ("kaggle", "zip", "folder", "phantoms")
LABEL_KEYS = ("species", "body_part", "modality", "disease")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class RegistryError(ConfigError):
    """The source registry, or a source given on the command line, cannot be used as written."""


@dataclass(frozen=True)
class ClassLabels:
    """What one class of a source shows; ``class_name`` is unique across all sources."""

    class_name: str
    species: str
    body_part: str
    modality: str
    disease: str
    holdout: bool = False


@dataclass(frozen=True)
class LabelCsv:
    """A CSV inside a source that labels files: ``file_column`` names a file, ``label_column``
    holds a class key. ``path`` is matched against the CSV's base name anywhere in the source
    (also inside archives), because downloads nest folders unpredictably."""

    path: str
    file_column: str
    label_column: str


@dataclass(frozen=True)
class SourceSpec:
    name: str
    kind: str
    location: str | None = None
    license_note: str = "see dataset page"
    classes: dict[str, ClassLabels] = field(default_factory=dict)
    label_csvs: tuple[LabelCsv, ...] = ()
    # Used when ``classes`` is empty (ad-hoc sources): every class folder becomes a class.
    default_labels: dict[str, str] = field(default_factory=dict)
    # Glob patterns of files that are not images of the classes (segmentation masks, ...).
    exclude: tuple[str, ...] = ()
    description: str = ""

    @property
    def infers_classes(self) -> bool:
        return not self.classes

    def lookup(self, key: str) -> ClassLabels | None:
        """The labels of a folder name or CSV label (case-insensitive), or None."""
        key = key.strip().lower()
        if not key:
            return None
        if not self.classes:
            return inferred_labels(key, self.default_labels)
        if key in self.classes:
            return self.classes[key]
        for pattern, labels in self.classes.items():  # keys with wildcards: "adenocarcinoma*"
            if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(key, pattern):
                return labels
        return None

    def excludes(self, path: str) -> bool:
        """Whether a source file (``a.zip!member`` for archive members) matches ``exclude``."""
        member = path.rsplit("!", 1)[-1]
        return any(
            fnmatch.fnmatchcase(p, pattern) for pattern in self.exclude for p in (path, member)
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceSpec:
        return cls(
            name=data["name"],
            kind=data["kind"],
            location=data.get("location"),
            license_note=data.get("license_note", ""),
            classes={k: ClassLabels(**v) for k, v in (data.get("classes") or {}).items()},
            label_csvs=tuple(LabelCsv(**c) for c in data.get("label_csvs") or ()),
            default_labels=dict(data.get("default_labels") or {}),
            exclude=tuple(data.get("exclude") or ()),
            description=data.get("description", ""),
        )


def slug(text: str) -> str:
    """``X-ray`` -> ``xray``, ``Diabetic retinopathy`` -> ``diabetic_retinopathy``."""
    text = text.lower().replace("-", "").replace("'", "")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def class_name_for(labels: Mapping[str, str]) -> str:
    """Class names derive from the labels, so two datasets of the same disease merge."""
    return "_".join(slug(labels[k]) for k in LABEL_KEYS)


def inferred_labels(folder: str, defaults: Mapping[str, str]) -> ClassLabels:
    """Labels of an ad-hoc source's class folder: the folder names the disease."""
    disease = re.sub(r"[_\s]+", " ", folder).strip().lower()
    labels = {
        "species": defaults.get("species", "human"),
        "body_part": defaults.get("body_part", "body"),
        "modality": defaults.get("modality", "medical image"),
        "disease": disease,
    }
    return ClassLabels(class_name=class_name_for(labels), **labels)


def load_registry(path: str | Path | None = None) -> dict[str, SourceSpec]:
    """Read and validate the registry; relative paths are relative to the repository."""
    path = Path(path or "configs/sources.yaml")
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        raise RegistryError(f"source registry {path} does not exist")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    entries = data.get("sources")
    if not isinstance(entries, dict) or not entries:
        raise RegistryError(f"{path} has no 'sources' mapping")
    specs = {name: parse_spec(name, entry or {}) for name, entry in entries.items()}
    _check_unique_class_names(specs)
    return specs


def parse_spec(name: str, entry: Mapping[str, Any]) -> SourceSpec:
    """One registry entry -> SourceSpec; source-level label fields are class defaults."""
    if not _NAME_RE.match(name):
        raise RegistryError(f"source name {name!r} must be lower-case letters, digits, _ . -")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise RegistryError(f"source {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    defaults = {k: str(entry[k]) for k in LABEL_KEYS if entry.get(k)}
    classes: dict[str, ClassLabels] = {}
    for key, value in (entry.get("classes") or {}).items():
        classes[str(key).lower()] = _parse_class(name, str(key), value or {}, defaults)
    csvs = tuple(_parse_csv(name, c) for c in entry.get("label_csv") or ())
    return SourceSpec(
        name=name,
        kind=kind,
        location=entry.get("location"),
        license_note=str(entry.get("license_note", "see dataset page")),
        classes=classes,
        label_csvs=csvs,
        default_labels=defaults,
        exclude=tuple(str(p) for p in entry.get("exclude") or ()),
        description=str(entry.get("description", "")),
    )


def _parse_class(
    source: str, key: str, value: Mapping[str, Any], defaults: Mapping[str, str]
) -> ClassLabels:
    labels = {k: str(value.get(k) or defaults.get(k) or "") for k in LABEL_KEYS}
    missing = [k for k, v in labels.items() if not v]
    if missing:
        raise RegistryError(f"source {source!r} class {key!r} lacks labels {missing}")
    return ClassLabels(
        class_name=str(value.get("class_name") or class_name_for(labels)),
        holdout=bool(value.get("holdout", False)),
        **labels,
    )


def _parse_csv(source: str, entry: Mapping[str, Any]) -> LabelCsv:
    try:
        return LabelCsv(
            path=str(entry["path"]),
            file_column=str(entry["file_column"]),
            label_column=str(entry["label_column"]),
        )
    except (KeyError, TypeError) as exc:
        raise RegistryError(
            f"source {source!r}: label_csv entries need path, file_column, label_column"
        ) from exc


def _check_unique_class_names(specs: Mapping[str, SourceSpec]) -> None:
    """One class name must mean one set of labels everywhere (sources may share a class)."""
    seen: dict[str, tuple[str, ClassLabels]] = {}
    for spec in specs.values():
        for labels in spec.classes.values():
            prior = seen.setdefault(labels.class_name, (spec.name, labels))
            if prior[1] != labels:
                raise RegistryError(
                    f"class {labels.class_name!r} means different labels in sources "
                    f"{prior[0]!r} and {spec.name!r}"
                )
