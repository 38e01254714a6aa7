"""Stage ``raw_sources``: fetch every configured source into ``raw/<source>/`` and index it.

Each source is fetched into a staging folder inside the data directory and swapped into place
only when complete, so a failed download never leaves half a source behind. A failing source
(no credentials, unknown slug, network down) is recorded with a clear error and the others
still materialise; the stage fails only when no source succeeded. ``raw/sources.json`` keeps,
per source, its status and the registry spec it was fetched with, which cleaning reads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ops.config import stage_config
from ops.layout import DataLayout
from ops.data.sources.fetch import fetch_source
from ops.data.sources.kaggle_fetch import SourceFetchError
from ops.data.sources.raw_index import index_frame, scan_source, write_parquet
from ops.data.sources.registry import RegistryError, SourceSpec, load_registry

log = logging.getLogger(__name__)
DOWNLOADED_KINDS = ("kaggle",)


def sources_json(layout: DataLayout) -> Path:
    return layout.raw / "sources.json"


def configured_specs(cfg: dict[str, Any]) -> list[SourceSpec]:
    """The registry entries named in ``ingest.sources``, in that order."""
    registry = load_registry(cfg.get("registry"))
    names = list(cfg.get("sources") or [])
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise RegistryError(
            f"ingest.sources names {unknown}, which are not in the registry; known: "
            f"{', '.join(sorted(registry))}"
        )
    if not names:
        raise RegistryError("ingest.sources is empty: name at least one source")
    return [registry[n] for n in names]


def materialize_raw_sources(params: dict[str, Any], layout: DataLayout) -> dict[str, Any]:
    """Stage function (``llcm stage raw_sources``, Dagster asset ``raw_sources``)."""
    cfg = stage_config(params, "ingest")
    return materialize_specs(configured_specs(cfg), layout, cfg)


def materialize_specs(
    specs: Sequence[SourceSpec], layout: DataLayout, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Fetch ``specs`` into ``layout.raw``, write the index and the sources record."""
    previous = read_sources_record(layout)
    record: dict[str, dict[str, Any]] = {}
    for spec in specs:
        record[spec.name] = _materialize_one(spec, layout, cfg, previous.get(spec.name))
    ok = [s for s in specs if record[s.name]["status"] in ("ok", "cached")]
    rows = [row for s in ok for row in scan_source(layout.raw_source(s.name), s)]
    write_parquet(index_frame(rows), layout.raw_index)
    for spec in specs:
        record[spec.name]["spec"] = spec.to_dict()
    _write_json(sources_json(layout), record)
    failures = {n: r["error"] for n, r in record.items() if r["status"] == "failed"}
    if not ok:
        raise SourceFetchError(
            ", ".join(record), "no source materialised: " + "; ".join(failures.values())
        )
    files = {s.name: sum(1 for r in rows if r["source"] == s.name) for s in ok}
    return {
        "sources": {n: {k: v for k, v in r.items() if k != "spec"} for n, r in record.items()},
        "files": files,
        "bytes": int(sum(r["size"] for r in rows)),
        "failures": failures,
        "index": str(layout.raw_index.relative_to(layout.root)),
    }


def read_sources_record(layout: DataLayout) -> dict[str, dict[str, Any]]:
    path = sources_json(layout)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def _materialize_one(
    spec: SourceSpec, layout: DataLayout, cfg: dict[str, Any], previous: dict[str, Any] | None
) -> dict[str, Any]:
    target = layout.raw_source(spec.name)
    base = {"kind": spec.kind, "location": spec.location, "license_note": spec.license_note}
    if _reusable(spec, target, cfg, previous):
        log.info("source %s: reusing the earlier download in %s", spec.name, target)
        return {**base, "status": "cached", "error": None, "fetched": previous.get("fetched")}
    staging = layout.tmp / f"raw-{spec.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.time()
    try:
        info = fetch_source(spec, staging, cfg)
    except (SourceFetchError, RegistryError, ValueError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        message = str(exc) if str(exc).startswith("source ") else f"source {spec.name!r}: {exc}"
        log.error("%s", message)
        return {**base, "status": "failed", "error": message}
    except Exception as exc:  # a bug or an OS error: recorded, the other sources still run
        shutil.rmtree(staging, ignore_errors=True)
        log.exception("source %s failed", spec.name)
        return {
            **base,
            "status": "failed",
            "error": f"source {spec.name!r}: {type(exc).__name__}: {exc}",
        }
    _swap_into_place(staging, target, layout.tmp / f"raw-{spec.name}-old")
    return {
        **base,
        **info,
        "status": "ok",
        "error": None,
        "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 2),
    }


def _reusable(
    spec: SourceSpec, target: Path, cfg: dict[str, Any], previous: dict[str, Any] | None
) -> bool:
    """Downloads are reused when the same location was fetched before and not refreshed."""
    return (
        spec.kind in DOWNLOADED_KINDS
        and not cfg.get("refresh_downloads", False)
        and previous is not None
        and previous.get("status") in ("ok", "cached")
        and previous.get("location") == spec.location
        and target.is_dir()
        and any(target.iterdir())
    )


def _swap_into_place(staging: Path, target: Path, old: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists() or target.is_symlink():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
