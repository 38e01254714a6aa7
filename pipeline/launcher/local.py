"""The ``local`` launcher: ``accelerate launch`` on this machine, rank 0 talking Dagster Pipes.

The launched ranks import ``pipeline.pipes_entry`` from the repository, so the repository goes
first on their ``PYTHONPATH``; the caller's own entries follow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import dagster as dg
import yaml

from ops.config import REPO_ROOT
from pipeline.launcher.commands import accelerate_command
from pipeline.launcher.local_pipes import TailingPipesSubprocessClient


def local_command(
    script: Sequence[str],
    *,
    python: str,
    config_file: str | None,
    num_processes: int | None,
    main_process_port: int,
    mixed_precision: str | None,
) -> list[str]:
    """The ``accelerate launch`` argv of a local launch of ``script``."""
    return accelerate_command(
        script,
        python=python,
        config_file=config_file,
        num_processes=num_processes,
        main_process_port=main_process_port,
        mixed_precision=mixed_precision,
    )


def local_processes(num_processes: int | None, accelerate_config: str | None) -> int:
    """How many processes a local launch starts: the field, else the accelerate config's."""
    if num_processes:
        return num_processes
    if accelerate_config:
        path = REPO_ROOT / accelerate_config
        config = yaml.safe_load(path.read_text()) if path.is_file() else {}
        return int((config or {}).get("num_processes") or 1)
    return 1


def run_local(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    command: list[str],
    env: Mapping[str, str],
    launcher_env: Mapping[str, str],
) -> dg.PipesClientCompletedInvocation:
    """Run ``command`` through a Pipes subprocess client that tails its stderr for failures."""
    context.log.info(f"launching: {' '.join(command)}")
    # The repo first (ranks import pipeline.pipes_entry), then whatever the caller added.
    extra = [launcher_env.get("PYTHONPATH"), os.environ.get("PYTHONPATH")]
    pythonpath = os.pathsep.join([str(REPO_ROOT), *(p for p in extra if p)])
    client = TailingPipesSubprocessClient(
        env={**launcher_env, **env, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"},
        cwd=str(REPO_ROOT),
    )
    return client.run(context=context, command=command)
