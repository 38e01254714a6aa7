"""Where every stage reads and writes: the data layout of DESIGN.md, rooted at ``$LLCM_DATA``.

All writes of the pipeline go through these paths, so nothing lands outside the data directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
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

    # a user's fine-tuning ---------------------------------------------------------------------
    def custom(self, name: str) -> Path:
        """The workspace of custom dataset ``name``: its raw files, MedImgs, latents, teacher."""
        return self.root / "custom" / name

    def finetuned_model(self, name: str) -> Path:
        """The fine-tuned consistency model ``name``: a ``LatentConsistencyModelPipeline``."""
        return self.models / "finetuned" / name

    def finetune_layout(self, name: str, student: str = "llcm") -> FinetuneLayout:
        """The layout every stage sees while fine-tuning on custom dataset ``name``."""
        check_name(name)
        return FinetuneLayout(self.custom(name), base=self, name=name, student=student)


NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Frozen components shared with the base pipeline: a fine-tune reads them, never writes them.
SHARED_MODELS = ("base", "domain_classifier")
BASE_TEACHER = "base_teacher"  # the base pipeline's teacher, seen from a fine-tune workspace


def check_name(name: str) -> str:
    """A custom dataset's name is a path component and a registry name: keep it plain."""
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"dataset name {name!r}: use 1-64 lower-case letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class FinetuneLayout(DataLayout):
    """A custom dataset's workspace ``custom/<name>/`` seen as a data directory of its own.

    Why a layout and not new code paths: every stage (cleaning, latents, teacher, distillation,
    benchmark) already reads and writes through a layout, so fine-tuning runs the same code on
    the workspace. What differs is where four things live:

    - the frozen VAE/text encoder (``base``) and the domain classifier come from the base
      pipeline, and ``base_teacher`` names the base teacher (what fine-tuning starts from);
    - the fine-tuned student ``student`` is the product: ``models/finetuned/<name>/`` of the
      base data directory;
    - MLflow (runs, registry) is the base data directory's, so ``<name>`` is registered beside
      the base models.
    """

    base: DataLayout = field(default=None)  # type: ignore[assignment]
    name: str = ""
    student: str = "llcm"
    teacher_from_base: bool = False  # True: "teacher" is the base teacher (a few-shot baseline)

    def with_base_teacher(self) -> FinetuneLayout:
        """This workspace, but its ``teacher`` is the base one: for a baseline built from the
        base model on the custom classes (DreamBooth), beside the fine-tuned teacher."""
        return replace(self, teacher_from_base=True)

    def model(self, name: str) -> Path:
        if name in SHARED_MODELS:
            return self.base.model(name)
        if name == BASE_TEACHER or (name == "teacher" and self.teacher_from_base):
            return self.base.model("teacher")
        if name == self.student:
            return self.base.finetuned_model(self.name)
        return self.models / name

    @property
    def mlflow_db(self) -> Path:
        return self.base.mlflow_db

    @property
    def mlflow_artifacts(self) -> Path:
        return self.base.mlflow_artifacts
