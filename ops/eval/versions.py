"""What version of the code and libraries produced a benchmark cell: part of its fingerprint.

Why: a cell's fingerprint used to hash its inputs (weights, reference images, config) only, so
a fix to a sampler or a metric left stale numbers in place. Now it also hashes the *source* of
the code that decides the numbers, split by what it affects:

* metric code (features, estimators, the bootstrap, the reference sets): every cell;
* sampler code: ``plan.py`` for every model, ``ops/distill/sampling.py`` and ``samplers.py``
  for consistency models only, so a change to the student sampler re-runs the students and not the teacher;
* library versions (torch, diffusers, numpy, scipy, clean-fid, Pillow, ...): every cell.

Content hashes need no version number to bump by hand; the price is that an edit to a comment
in these files re-runs the cells, which is the safe side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import cache
from importlib import metadata
from pathlib import Path

OPS = Path(__file__).resolve().parent.parent
METRIC_CODE = tuple(
    f"eval/{name}.py"
    for name in (
        "bootstrap", "cells", "classwise", "distances", "extractor", "features", "kid",
        "manifold", "reference", "reference_sets", "saved_features", "settings",
    )
)  # fmt: skip
SAMPLER_CODE = {
    "diffusion": ("eval/plan.py", "eval/shards.py"),
    "consistency": ("eval/plan.py", "eval/shards.py", "distill/sampling.py", "distill/samplers.py"),
}
LIBRARIES = (
    "torch", "numpy", "scipy", "diffusers", "transformers", "clean-fid", "pillow", "safetensors",
)  # fmt: skip


def source_hash(files: Iterable[str], root: Path = OPS) -> str:
    """sha256 over the named files' paths and bytes (a missing file hashes as absent)."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        path = root / rel
        digest.update(rel.encode())
        digest.update(path.read_bytes() if path.is_file() else b"<absent>")
    return digest.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


@cache
def code_versions() -> dict[str, str]:
    """{"metrics": hash, "diffusion": hash, "consistency": hash}, read once per process."""
    return {
        "metrics": source_hash(METRIC_CODE),
        **{family: source_hash(files) for family, files in SAMPLER_CODE.items()},
    }
