"""One source of truth for configuration: ``params.yaml``.

The file has preset-independent stage sections (``ingest``, ``distill``, ...) and a ``presets``
mapping whose entries (``tiny``, ``sd15``) hold what differs with scale. ``stage_config`` merges
the two for one stage; a key may live in one place only, so a ``dvc exp run -S a.b=c`` or a
Dagster run override can never be silently shadowed by the other.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ops.layout import DataLayout

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS = REPO_ROOT / "params.yaml"


class ConfigError(ValueError):
    """A configuration file or override that cannot be used as written."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (the syntax of ``dvc exp run -S``) into a key path and a YAML value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    return parts, yaml.safe_load(raw) if raw.strip() else ""


def apply_override(params: dict, parts: list[str], value: Any) -> None:
    """Set ``params[parts[0]]...[parts[-1]] = value``; the parent keys must already exist."""
    node = params
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"override key {'.'.join(parts[: i + 1])!r} is not a section")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"override key {'.'.join(parts)!r} does not exist in params")
    node[parts[-1]] = value


def load_params(
    path: str | os.PathLike | None = None,
    preset: str | None = None,
    overrides: Iterable[str] = (),
) -> dict[str, Any]:
    """Load params.yaml, apply ``key=value`` overrides, and select the preset.

    ``LLCM_PARAMS`` names another file; ``LLCM_PRESET`` another preset. Returns a fresh dict.
    """
    path = Path(path or os.environ.get("LLCM_PARAMS") or DEFAULT_PARAMS)
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist")
    with path.open() as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict) or "presets" not in params:
        raise ConfigError(f"{path} has no 'presets' section")
    for text in overrides:
        apply_override(params, *parse_override(text))
    params["preset"] = preset or os.environ.get("LLCM_PRESET") or params.get("preset", "tiny")
    if params["preset"] not in params["presets"]:
        known = ", ".join(sorted(params["presets"]))
        raise ConfigError(f"unknown preset {params['preset']!r}; known presets: {known}")
    return params


def stage_config(params: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The merged configuration of one stage: its shared section plus the preset's section."""
    shared = copy.deepcopy(params.get(stage) or {})
    scaled = copy.deepcopy(params["presets"][params["preset"]].get(stage) or {})
    clash = sorted(set(shared) & set(scaled))
    if clash:
        raise ConfigError(
            f"keys {clash} of stage {stage!r} are set both in the shared section and in "
            f"presets.{params['preset']}.{stage}; keep each key in one place"
        )
    shared.update(scaled)
    shared["seed"] = shared.get("seed", params.get("seed", 0))
    return shared


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The arguments every entry point takes: params file, preset, overrides, data directory.

    One definition for the ``llcm`` verbs, ``python -m ops.entry`` and ``pipeline.pipes_entry``,
    so a launched rank parses exactly what the command that launched it was given."""
    parser.add_argument("--params", default=None, help="params file (default: params.yaml)")
    parser.add_argument("--preset", default=None, help="preset name, e.g. tiny or sd15")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params key, as dvc exp run -S does (repeatable)",
    )
    parser.add_argument(
        "--data", default=None, help="data directory (default: $LLCM_DATA or ./data)"
    )


def config_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], DataLayout]:
    """The params and the data layout that parsed ``add_config_args`` arguments name."""
    return load_params(args.params, args.preset, args.overrides), DataLayout.from_env(args.data)
