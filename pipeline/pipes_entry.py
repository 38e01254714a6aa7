"""``python -m pipeline.pipes_entry STAGE ...``: one pipeline stage as a Dagster Pipes process.

This is what ``LauncherResource`` runs under ``accelerate launch`` (locally or in a Kubernetes
pod). Every rank runs the stage function, because distributed training needs all of them; only
global rank 0 talks to Dagster, so the orchestrator sees one log stream, one summary and one
materialisation however many processes train. Without a Pipes context in the environment (run
by hand, or under ``dvc repro``) it simply runs the stage and prints the summary, like
``llcm stage``.

It imports neither dagster nor torch: every rank pays for its imports, and a stage that needs
torch imports it itself.

``STAGE`` is a name of ``pipeline.stages.STAGES`` or a ``module:function`` import string, so a
training entrypoint or a test probe runs through the same door as the registered stages.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ops.config import add_config_args, config_from_args
from ops.imports import import_callable
from pipeline.stages import StageFn, resolve

#: Loggers whose records rank 0 forwards to the Dagster event log.
FORWARDED_LOGGERS = ("ops", "pipeline")
#: Key under which rank 0 reports the stage summary as a Pipes custom message.
SUMMARY_MESSAGE_KEY = "llcm_stage_summary"


def resolve_stage(stage: str) -> StageFn:
    """A registered stage name (``pipeline.stages.resolve``), or a ``module:function``."""
    if ":" not in stage:
        return resolve(stage)
    return import_callable(stage)


def global_rank() -> int:
    """The global rank set by torchrun/accelerate (``RANK``); 0 when launched as one process."""
    return int(os.environ.get("RANK", "0"))


def jsonable(value: Any) -> Any:
    """The summary as plain JSON values: paths and other objects become strings.

    Non-finite floats become strings too, since they are not JSON and Dagster's metadata
    would reject them.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return jsonable(value.item())
    return str(value)


def summary_metadata(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Pipes metadata for a stage summary: scalars as they are, paths as paths, the rest JSON.

    Pipes treats a dict value as an already-typed ``{raw_value, type}`` entry, so nested
    values must be wrapped explicitly.
    """
    metadata: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, Path):
            metadata[str(key)] = {"raw_value": str(value), "type": "path"}
        elif isinstance(value, (Mapping, list, tuple, set)):
            metadata[str(key)] = {"raw_value": jsonable(value), "type": "json"}
        else:
            metadata[str(key)] = jsonable(value)
    return metadata


class _PipesLogHandler(logging.Handler):
    """Forwards log records of the stage code to the Dagster event log through Pipes."""

    def __init__(self, pipes_logger: logging.Logger) -> None:
        super().__init__(level=logging.INFO)
        self._pipes_logger = pipes_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pipes_logger.log(record.levelno, f"[{record.name}] {record.getMessage()}")
        except Exception:  # a logging failure must never fail the training run
            self.handleError(record)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.pipes_entry", description=__doc__.splitlines()[0]
    )
    parser.add_argument("stage", help="a stage name or a module:function import string")
    add_config_args(parser)
    return parser


def run_with_pipes(stage: str, fn: StageFn, params: dict, layout: Any) -> dict[str, Any]:
    """Run the stage inside an open Pipes session and report what it returned."""
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        handler = _PipesLogHandler(pipes.log)
        loggers = [logging.getLogger(name) for name in FORWARDED_LOGGERS]
        for logger in loggers:
            logger.addHandler(handler)
            logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
        try:
            world = os.environ.get("WORLD_SIZE", "1")
            pipes.log.info(f"stage {stage} starting: world size {world}, data {layout.root}")
            summary = fn(params, layout) or {}
            pipes.report_custom_message({SUMMARY_MESSAGE_KEY: jsonable(summary)})
            if pipes.is_asset_step and len(pipes.asset_keys) == 1:
                pipes.report_asset_materialization(metadata=summary_metadata(summary))
            return summary
        finally:
            for logger in loggers:
                logger.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fn = resolve_stage(args.stage)
    params, layout = config_from_args(args)
    if global_rank() == 0 and "DAGSTER_PIPES_CONTEXT" in os.environ:
        run_with_pipes(args.stage, fn, params, layout)
    else:
        summary = fn(params, layout)
        if global_rank() == 0:
            print(json.dumps(jsonable(summary or {}), indent=2))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one process never imports torch for it
        from ops.training.runtime import leave_process_group

        leave_process_group()
    return 0


def elastic_main(argv: Sequence[str] | None = None) -> int:
    """``main``, recording a failure where a supervising torchrun agent looks for it.

    The agent then prints the failing rank's own exception in its failure summary (otherwise
    it says only "exitcode 1"), and that summary is the tail the launcher quotes. This is what
    torch's ``@record`` does, with torch imported only on failure so healthy ranks of a stage
    that does not need torch do not pay for it.
    """
    try:
        return main(argv)
    except Exception as exc:
        if "TORCHELASTIC_ERROR_FILE" in os.environ:
            from torch.distributed.elastic.multiprocessing.errors import get_error_handler

            handler = get_error_handler()
            handler.initialize()
            handler.record_exception(exc)
        raise


if __name__ == "__main__":
    sys.exit(elastic_main())
