"""Short content hashes that decide whether work can be reused (checkpoints, latents)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Keys that change how long or how a run is executed, not what it computes: a checkpoint stays
# valid when only these change (train longer, checkpoint more often, use more processes).
EXECUTION_KEYS = frozenset(
    {"steps", "checkpoint_every", "log_every", "num_processes", "threads", "gradient_checkpointing"}
)


def config_fingerprint(cfg: Mapping[str, Any], *inputs: str, ignore: Iterable[str] = ()) -> str:
    """A hash of a stage's configuration (minus execution keys) and of its inputs' hashes."""
    skip = EXECUTION_KEYS | set(ignore)
    payload = {k: v for k, v in sorted(cfg.items()) if k not in skip}
    text = json.dumps([payload, list(inputs)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def directory_hash(*directories: Path) -> str:
    """A hash of every file's relative path and bytes under ``directories``."""
    digest = hashlib.sha256()
    for directory in directories:
        directory = Path(directory)
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(directory.parent)).encode())
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]
