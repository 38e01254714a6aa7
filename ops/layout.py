"""Where every stage reads and writes: the data layout of DESIGN.md, rooted at ``$LLCM_DATA``.

All writes of the pipeline go through these paths, so nothing lands outside the data directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data directory: the argument, else ``$LLCM_DATA``, else ``./data``."""
    return Path(root or os.environ.get("LLCM_DATA") or "data").resolve()


@dataclass(frozen=True)
class DataLayout:
    root: Path

    @classmethod
    def from_env(cls, root: str | os.PathLike | None = None) -> DataLayout:
        return cls(data_root(root))

    # raw sources -----------------------------------------------------------------------------
    @property
    def raw(self) -> Path:
        return self.root / "raw"

    def raw_source(self, name: str) -> Path:
        return self.raw / name

    @property
    def raw_index(self) -> Path:
        """Parquet listing of every raw file of every source (written by ``raw_sources``)."""
        return self.raw / "index.parquet"

    # MedImgs ---------------------------------------------------------------------------------
    @property
    def medimgs(self) -> Path:
        return self.root / "medimgs"

    @property
    def images(self) -> Path:
        return self.medimgs / "images"

    @property
    def manifest(self) -> Path:
        return self.medimgs / "manifest.parquet"

    @property
    def rejects(self) -> Path:
        return self.medimgs / "rejects.parquet"

    @property
    def duplicates(self) -> Path:
        return self.medimgs / "duplicates.parquet"

    # latents and models ----------------------------------------------------------------------
    @property
    def latents(self) -> Path:
        return self.root / "latents"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model(self, name: str) -> Path:
        return self.models / name

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint_dir(self, name: str) -> Path:
        return self.checkpoints / name

    # reports and tracking --------------------------------------------------------------------
    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def utility_table(self) -> Path:
        """Train on synthetic, test on real (``ops.privacy``); the benchmark table reads it."""
        return self.reports / "utility.parquet"

    @property
    def privacy_table(self) -> Path:
        """The memorisation audit per model and class (``ops.privacy``); read by the benchmark."""
        return self.reports / "privacy_audit.parquet"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow" / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlflow" / "artifacts"

    @property
    def tmp(self) -> Path:
        """Scratch space inside the data directory (never the system temp folder)."""
        return self.root / "tmp"
