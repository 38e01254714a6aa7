"""Fetch one source into an empty staging folder, by kind: phantoms, kaggle, zip, folder.

Files land as they came: archives stay archives (cleaning lists and reads their members
safely), folders are copied with their symlinks kept as links (cleaning rejects them rather
than following them out of the data directory).
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ops.config import REPO_ROOT
from ops.data.sources.kaggle_fetch import SourceFetchError, download_kaggle
from ops.data.sources.phantoms import generate_phantoms
from ops.data.sources.registry import SourceSpec

DOWNLOAD_CHUNK = 1 << 20


def fetch_source(spec: SourceSpec, dest: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Materialise ``spec`` into ``dest`` (an empty folder); returns what was fetched."""
    if spec.kind == "phantoms":
        summary = generate_phantoms(
            dest,
            spec,
            per_class=int(cfg["phantoms_per_class"]),
            seed=int(cfg["seed"]),
            max_image_pixels=int(cfg["max_image_pixels"]),
            workers=int(cfg.get("workers", 1)),
        )
        # ``planted`` (file -> outcome cleaning must reach) is kept in raw/sources.json as ground truth
        return {"generated_images": summary["images"], "planted": summary["planted"]}
    if not spec.location:
        raise SourceFetchError(spec.name, f"no location given for this {spec.kind} source")
    if spec.kind == "kaggle":
        path = download_kaggle(spec.name, spec.location, dest)
        return {"archive": path.name}
    if spec.kind == "zip":
        return {"archive": fetch_zip(spec.name, spec.location, dest).name}
    if spec.kind == "folder":
        copy_folder(spec.name, spec.location, dest)
        return {}
    raise SourceFetchError(spec.name, f"unknown kind {spec.kind!r}")


def local_path(location: str) -> Path:
    """Registry paths are relative to the repository; the CLI passes absolute paths."""
    path = Path(location).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def fetch_zip(source: str, location: str, dest: Path) -> Path:
    """Copy a local archive, or stream an http(s) one, into ``dest`` unchanged."""
    url = urlparse(location)
    if url.scheme in ("http", "https"):
        name = Path(url.path).name or f"{source}.zip"
        target = dest / name
        try:
            with urllib.request.urlopen(location, timeout=60) as resp, target.open("wb") as out:
                shutil.copyfileobj(resp, out, DOWNLOAD_CHUNK)
        except urllib.error.HTTPError as exc:
            raise SourceFetchError(
                source, f"download of {location} failed: HTTP {exc.code}"
            ) from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise SourceFetchError(
                source, f"network failure downloading {location}: {exc}", kind="network"
            ) from exc
        return target
    if url.scheme not in ("", "file"):
        raise SourceFetchError(source, f"unsupported archive location {location!r}")
    path = local_path(url.path if url.scheme == "file" else location)
    if not path.is_file():
        raise SourceFetchError(source, f"archive {path} does not exist", kind="not_found")
    target = dest / path.name
    shutil.copyfile(path, target)
    return target


def copy_folder(source: str, location: str, dest: Path) -> None:
    """Copy a folder tree as it is: symlinks are copied as links, never followed."""
    path = local_path(location)
    if not path.is_dir():
        raise SourceFetchError(source, f"folder {path} does not exist", kind="not_found")
    shutil.copytree(path, dest, symlinks=True, dirs_exist_ok=True)
