"""What every launcher kind shares: the kinds, the ``accelerate launch`` command line and the
``StageRun`` an asset gets back, whichever kind ran the stage.

Pure functions (no process is started here), so tests check the exact commands.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import dagster as dg

from pipeline.pipes_entry import summary_metadata

CPU_CONFIG = "deployment/accelerate/cpu-2proc.yaml"
LOG_TAIL_LINES = 50


class LauncherKind(StrEnum):
    """Where a stage runs (member names are what run config and the launchpad show)."""

    inprocess = "inprocess"
    local = "local"
    k8s = "k8s"


class MixedPrecision(StrEnum):
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


@dataclass(frozen=True)
class StageRun:
    """What a stage returned, wherever it ran."""

    stage: str
    summary: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    def materialize_result(self, metadata: Mapping[str, Any] | None = None) -> dg.MaterializeResult:
        """The asset's result: the stage's metadata plus the asset's own (which wins)."""
        return dg.MaterializeResult(metadata={**self.metadata, **(metadata or {})})


def dagster_metadata(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The same metadata rank 0 reports through Pipes, built in the asset's own process."""
    out: dict[str, Any] = {}
    for key, value in summary_metadata(summary).items():
        if isinstance(value, dict) and value.get("type") == "path":
            out[key] = dg.MetadataValue.path(value["raw_value"])
        elif isinstance(value, dict) and value.get("type") == "json":
            out[key] = dg.MetadataValue.json(value["raw_value"])
        elif value is None:
            out[key] = dg.MetadataValue.null()
        else:
            out[key] = value
    return out


def stage_script(
    stage: str,
    *,
    data_root: str,
    params_path: str | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``accelerate launch`` script part for one stage: ``-m pipeline.pipes_entry ...``."""
    script = ["-m", "pipeline.pipes_entry", stage, "--data", data_root]
    if params_path:
        script += ["--params", params_path]
    if preset:
        script += ["--preset", preset]
    for text in overrides:
        script += ["--set", text]
    return script + list(extra_args)


def accelerate_command(
    script: Sequence[str],
    *,
    python: str = "python",
    config_file: str | None = None,
    num_processes: int | None = None,
    num_machines: int = 1,
    machine_rank: int | None = None,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
    mixed_precision: str | None = None,
) -> list[str]:
    """``python -m accelerate.commands.launch [options] SCRIPT...``.

    ``num_processes`` is the total over all machines, as accelerate counts it. Without a config
    file, more than one process means ``--multi_gpu``: it is the launcher that starts one process
    per rank (with ``Accelerator(cpu=True)`` they use gloo); ``--cpu --num_processes 2``
    silently runs a single process.
    """
    cmd = [python, "-m", "accelerate.commands.launch"]
    if config_file:
        cmd += ["--config_file", config_file]
    elif num_processes and num_processes > 1:
        cmd += ["--multi_gpu"]
    if num_processes:
        cmd += ["--num_processes", str(num_processes)]
    if config_file or num_machines > 1:
        cmd += ["--num_machines", str(num_machines)]
    if machine_rank is not None:
        cmd += ["--machine_rank", str(machine_rank)]
    if main_process_ip:
        cmd += ["--main_process_ip", main_process_ip]
    if main_process_port:
        cmd += ["--main_process_port", str(main_process_port)]
    if mixed_precision:
        cmd += ["--mixed_precision", mixed_precision]
    return cmd + list(script)


def free_port() -> int:
    """A free TCP port for the local rendezvous, so concurrent launches do not collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
