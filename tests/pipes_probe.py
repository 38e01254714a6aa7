"""Test-only stages for the launcher: run as ``pipes_probe:NAME`` import strings
(``tests/`` on ``PYTHONPATH``, as under pytest).

They have the signature of a pipeline stage, ``(params, layout) -> summary``, so the launcher
treats them exactly like ``teacher`` or ``llcm`` while costing seconds instead of hours.
"""

from __future__ import annotations

import logging
from typing import Any

from ops.layout import DataLayout

# Under "ops" so rank 0 forwards its records to the Dagster event log, as for real stages.
log = logging.getLogger("ops.pipes_probe")


def world_size_probe(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Join the process group as a trainer would and report who took part."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    accelerator = Accelerator(cpu=True)
    ranks = gather_object([accelerator.process_index])
    log.info("probe rank %d of %d", accelerator.process_index, accelerator.num_processes)
    return {
        "world_size": accelerator.num_processes,
        "rank0": accelerator.process_index == 0,
        "ranks_seen": sorted(ranks),
        "backend": str(accelerator.state.backend),
        "preset": params["preset"],
        "data_root": layout.root,
    }


def failing_probe(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Fail the way a broken trainer does: an exception on every rank."""
    raise RuntimeError("probe exploded on purpose: CUDA out of memory (simulated)")


def summary_probe(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """A summary with the value types real stages return (paths, nested dicts, lists)."""
    return {
        "images": 12,
        "loss": 0.25,
        "model_dir": layout.model("teacher"),
        "per_class": {"ct": 6, "mri": 6},
        "steps": [1, 2, 4],
        "preset": params["preset"],
    }
