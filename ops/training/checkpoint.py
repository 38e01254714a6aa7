"""Resumable training checkpoints, written atomically, and atomic output directories.

A checkpoint is a directory ``step-00000200/`` under the stage's checkpoint folder:

- ``<name>.safetensors``   each module (``safetensors.torch.save_model``) or EMA state
- ``optimizer.pt``         optimizer state (``torch.save``; loaded back with ``weights_only``)
- ``scaler.pt``            the fp16 grad scaler, when mixed precision uses one
- ``rng-rank<r>.safetensors`` every process's RNG states
- ``state.json``           step, samples seen, world size, fingerprint, MLflow run id, loss curve

It is written into ``.step-00000200.tmp/`` and renamed when complete, so a process killed while
writing leaves no half checkpoint behind; older checkpoints are then removed. ``fingerprint``
ties a checkpoint to the configuration that produced it: a checkpoint of another
configuration is never resumed. After a successful run the trainer clears the folder (the
finished model lives in ``models/``), so checkpoints exist only for interrupted runs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ops.training.runtime import capture_rng_state, restore_rng_state


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a scratch directory that replaces ``final`` only if the block succeeds."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk and its ``state.json``."""

    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def _module_file(path: Path, name: str) -> Path:
    return path / f"{name}.safetensors"


class CheckpointStore:
    """The checkpoints of one training stage, in ``directory``.

    Multi-process use: every process calls ``save``/``load`` at the same step; only the main
    process writes model and optimizer files, every process writes its own RNG state.
    """

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint

    def _complete(self) -> list[Checkpoint]:
        found = []
        for path in sorted(self.directory.glob("step-*")):
            state_file = path / "state.json"
            if path.is_dir() and state_file.is_file():
                found.append(Checkpoint(path, json.loads(state_file.read_text())))
        return found

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint of this configuration, if any."""
        mine = [c for c in self._complete() if c.state.get("fingerprint") == self.fingerprint]
        return max(mine, key=lambda c: c.step, default=None)

    def save(
        self,
        accelerator,
        step: int,
        *,
        modules: Mapping[str, Any],
        optimizer: torch.optim.Optimizer,
        state: Mapping[str, Any],
    ) -> Path:
        """Write checkpoint ``step`` (all processes call this) and drop the older ones.

        ``modules`` maps a file name to an ``nn.Module`` (saved with ``save_model``, which
        handles tied weights) or to an object with ``state_dict()`` of tensors (e.g. ``EMA``).
        """
        final = self.directory / f"step-{step:08d}"
        tmp = self.directory / f".step-{step:08d}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        tensors, meta = capture_rng_state()
        save_file(tensors, str(tmp / f"rng-rank{accelerator.process_index}.safetensors"), meta)
        if accelerator.is_main_process:
            for name, obj in modules.items():
                if isinstance(obj, torch.nn.Module):
                    save_model(obj, str(_module_file(tmp, name)))
                else:
                    sd = {k: v.detach().contiguous().cpu() for k, v in obj.state_dict().items()}
                    save_file(sd, str(_module_file(tmp, name)))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            if getattr(accelerator, "scaler", None) is not None:
                torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
            full_state = {
                **state,
                "step": step,
                "fingerprint": self.fingerprint,
                "world_size": accelerator.num_processes,
            }
            (tmp / "state.json").write_text(json.dumps(full_state, indent=1))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            tmp.rename(final)
            for old in self.directory.glob("step-*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def load(
        self,
        checkpoint: Checkpoint,
        accelerator,
        *,
        modules: Mapping[str, Any],
        optimizer: torch.optim.Optimizer,
    ) -> dict[str, Any]:
        """Restore modules, optimizer, scaler and this process's RNG; return ``state.json``."""
        path = checkpoint.path
        for name, obj in modules.items():
            if isinstance(obj, torch.nn.Module):
                load_model(obj, str(_module_file(path, name)), device=str(accelerator.device))
            else:
                obj.load_state_dict(load_file(str(_module_file(path, name))))
        optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        )
        scaler_file = path / "scaler.pt"
        if scaler_file.is_file() and getattr(accelerator, "scaler", None) is not None:
            accelerator.scaler.load_state_dict(torch.load(scaler_file, weights_only=True))
        rng_file = path / f"rng-rank{accelerator.process_index}.safetensors"
        if rng_file.is_file():  # absent when resuming with more processes than before
            from safetensors import safe_open

            with safe_open(str(rng_file), "pt") as fh:
                meta = fh.metadata()
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
            restore_rng_state(tensors, meta)
        return dict(checkpoint.state)

    def clear(self) -> None:
        """Remove every checkpoint (called by the main process after a successful run)."""
        shutil.rmtree(self.directory, ignore_errors=True)
