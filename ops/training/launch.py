"""Run a trainer in this process, or in N processes under ``accelerate launch``.

The command for N processes is ``accelerate launch --multi_gpu --num_processes N -m
ops.entry STAGE ...`` on GPU and CPU machines alike: on CPU, ``--cpu`` would silently
start one process, so ``--multi_gpu`` starts N and the trainer's ``Accelerator(cpu=True)``
picks the gloo backend (see ``runtime.create_accelerator``). The launched run receives the
caller's fully resolved params as a YAML file, so run-level overrides carry over, and writes its
summary JSON where the caller reads it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from ops.config import REPO_ROOT
from ops.layout import DataLayout
from ops.training.runtime import launched_world_size

Trainer = Callable[[dict[str, Any], DataLayout], dict[str, Any]]
ENTRY_MODULE = "ops.entry"  # ``python -m ops.entry STAGE``: resolves STAGE to its trainer


def free_port() -> int:
    """A free TCP port for the process group's rendezvous (parallel runs must not collide)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_command(
    stage: str,
    *,
    num_processes: int,
    params_path: Path | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    data_root: Path | None = None,
    summary_path: Path | None = None,
    mixed_precision: str = "no",
    port: int | None = None,
) -> list[str]:
    """The ``accelerate launch`` argv for ``python -m ops.entry STAGE ...``."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
        "--main_process_port", str(port or free_port()),
        "-m", ENTRY_MODULE, stage,
    ]  # fmt: skip
    return cmd + entry_arguments(params_path, preset, overrides, data_root, summary_path)


def entry_arguments(
    params_path: Path | None,
    preset: str | None,
    overrides: Sequence[str],
    data_root: Path | None,
    summary_path: Path | None,
) -> list[str]:
    args: list[str] = []
    if params_path:
        args += ["--params", str(params_path)]
    if preset:
        args += ["--preset", preset]
    for override in overrides:
        args += ["--set", override]
    if data_root:
        args += ["--data", str(data_root)]
    if summary_path:
        args += ["--summary", str(summary_path)]
    return args


def launch(
    stage: str,
    *,
    params_path: Path | None,
    preset: str | None,
    data_root: Path,
    num_processes: int,
    overrides: Sequence[str] = (),
    summary_path: Path | None = None,
    mixed_precision: str = "no",
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run trainer ``stage`` in ``num_processes`` processes; output streams to this console."""
    cmd = accelerate_command(
        stage,
        num_processes=num_processes,
        params_path=params_path,
        preset=preset,
        overrides=overrides,
        data_root=data_root,
        summary_path=summary_path,
        mixed_precision=mixed_precision,
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=check)


def run_trainer(
    stage: str, trainer: Trainer, params: dict[str, Any], layout: DataLayout, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Run ``trainer`` here, or trainer ``stage`` launched in ``cfg["num_processes"]``
    processes (``python -m ops.entry STAGE`` resolves the name to the same function); its summary.

    The caller hands over the function itself, so this infrastructure never imports a stage:
    imports point from the stages down to ``ops.training``, and only the entry point at the
    top of ``ops`` knows every trainer by name.

    In this process when ``num_processes`` <= 1, and also when this process already is one rank
    of a launch (the stage function runs on every rank, e.g. under Dagster's launcher): the
    trainer then joins that launch's process group. Launched runs get ``params`` as written
    (overrides included) through a YAML file in the data directory's scratch space.
    """
    num_processes = int(cfg.get("num_processes", 1) or 1)
    if num_processes <= 1 or launched_world_size() > 1:
        return trainer(params, layout)
    layout.tmp.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    params_path = layout.tmp / f"{stage}-params-{token}.yaml"
    summary_path = layout.tmp / f"{stage}-summary-{token}.json"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        launch(
            stage,
            params_path=params_path,
            preset=params["preset"],
            data_root=layout.root,
            num_processes=num_processes,
            summary_path=summary_path,
            mixed_precision=str(cfg.get("mixed_precision", "no")),
        )
        return json.loads(summary_path.read_text())
    finally:
        params_path.unlink(missing_ok=True)
        summary_path.unlink(missing_ok=True)
