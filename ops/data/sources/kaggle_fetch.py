"""Download a Kaggle dataset with the official ``kaggle`` client, in a child process.

Why a child process: the client authenticates when it is imported, calls ``exit(1)`` when no
credentials are found, prints to stdout, and reads ``KAGGLE_API_ENVIRONMENT`` and its config
path once per process. Running it as ``python -m ops.data.sources.kaggle_fetch SLUG DEST`` keeps all
of that out of the pipeline process, honours the environment of each call, and lets us turn
every failure into one clear error naming the source.

Credentials come from the user's environment (``KAGGLE_USERNAME``/``KAGGLE_KEY``,
``KAGGLE_API_TOKEN``) or ``kaggle.json`` as the client finds them; this module never reads,
logs or writes them, and scrubs their values from any message it passes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from ops.config import REPO_ROOT

SLUG_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[0-9]+)?$")
_SECRET_VARS = ("KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_PASSWORD")


class SourceFetchError(RuntimeError):
    """A source that could not be fetched; the message names the source and the cause."""

    def __init__(self, source: str, message: str, kind: str = "error") -> None:
        super().__init__(f"source {source!r}: {message}")
        self.source = source
        self.kind = kind


def download_kaggle(source: str, slug: str, dest: Path) -> Path:
    """Download dataset ``slug`` (``owner/name[/version]``) as one zip into ``dest``."""
    if not SLUG_RE.match(slug or ""):
        raise SourceFetchError(source, f"{slug!r} is not a Kaggle slug of the form owner/dataset")
    dest.mkdir(parents=True, exist_ok=True)
    pythonpath = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "ops.data.sources.kaggle_fetch", slug, str(dest)],
        cwd=dest,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    result = _last_json_line(proc.stdout)
    if result is None:
        lines = proc.stderr.strip().splitlines()
        tail = _scrub(lines[-1]) if lines else "no output"
        raise SourceFetchError(
            source, f"kaggle download of {slug} crashed (exit {proc.returncode}): {tail}"
        )
    if not result.get("ok"):
        raise SourceFetchError(source, _scrub(result["message"]), kind=result.get("kind", "error"))
    path = dest / result["file"]
    if not path.is_file():
        raise SourceFetchError(source, f"kaggle reported {result['file']} but it is not in {dest}")
    return path


def _last_json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return None


def _scrub(text: str) -> str:
    for var in _SECRET_VARS:
        secret = os.environ.get(var)
        if secret:
            text = text.replace(secret, "***")
    return text


# child process ----------------------------------------------------------------------------------
def _child(slug: str, dest: str) -> dict[str, Any]:
    """Runs in the child: authenticate, download, classify failures. Returns a JSON-able dict."""
    try:
        import requests
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:  # pragma: no cover - the client is a declared dependency
        return _fail("client", f"the kaggle client is not installed ({exc})")
    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit:
        return _fail(
            "credentials",
            "no Kaggle credentials found: set KAGGLE_USERNAME and KAGGLE_KEY (or "
            "KAGGLE_API_TOKEN), or put kaggle.json in ~/.kaggle",
        )
    try:
        api.dataset_download_files(slug, path=dest, force=True, quiet=True, unzip=False)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 404:
            return _fail("not_found", f"Kaggle dataset {slug} not found (HTTP 404): check the slug")
        if status in (401, 403):
            return _fail(
                "credentials", f"Kaggle refused the credentials for {slug} (HTTP {status})"
            )
        return _fail("http", f"Kaggle download of {slug} failed: HTTP {status}: {exc}")
    except (requests.ConnectionError, requests.Timeout) as exc:
        return _fail(
            "network", f"network failure downloading {slug} from Kaggle: {type(exc).__name__}"
        )
    except Exception as exc:  # any other client failure becomes a recorded error
        return _fail("error", f"Kaggle download of {slug} failed: {type(exc).__name__}: {exc}")
    name = slug.split("/")[1] + ".zip"
    return {"ok": True, "file": name, "bytes": (Path(dest) / name).stat().st_size}


def _fail(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "kind": kind, "message": message}


def main(argv: list[str] | None = None) -> int:
    slug, dest = (argv or sys.argv[1:])[:2]
    with contextlib.redirect_stdout(sys.stderr):  # the client prints; stdout carries our result
        result = _child(slug, dest)
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
