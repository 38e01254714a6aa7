"""Kaggle sources through the real ``kaggle`` client, against a local stand-in for the API.

With ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` the client talks to http://localhost (port 80): it
POSTs ``/api/v1/datasets.DatasetApiService/DownloadDataset`` with a JSON body naming the dataset
(``ownerSlug``, ``datasetSlug``), follows the redirect it gets, and streams the zip it finds.
The stub below implements just that.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ops.config import load_params, stage_config
from ops.data.cleaning.build import clean_raw
from ops.data.cleaning.tables import read_tables
from ops.data.sources.kaggle_fetch import SourceFetchError
from ops.data.sources.materialize import materialize_specs
from ops.data.sources.registry import SourceSpec, load_registry, parse_spec
from ops.layout import DataLayout

REPO = Path(__file__).resolve().parent.parent
USER, KEY = "tester", "s3cret-kaggle-key-0123456789"
DOWNLOAD_PATH = "/api/v1/datasets.DatasetApiService/DownloadDataset"


def dataset_zip() -> bytes:
    """A small Kaggle-style download: class folders under a split folder."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for label in ("NORMAL", "PNEUMONIA"):
            for i in range(3):
                png = io.BytesIO()
                Image.fromarray((rng.random((48, 40)) * 255).astype(np.uint8)).save(png, "PNG")
                zf.writestr(f"chest_xray/train/{label}/{i}.png", png.getvalue())
        zf.writestr("chest_xray/README.md", "# chest X-rays\n")
    return buf.getvalue()


class KaggleStub(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # http.server names handlers do_<METHOD>
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.server.seen.append((self.path, self.headers.get("Authorization"), body))
        if self.path != DOWNLOAD_PATH:
            return self._json(404, {"code": 404, "message": "no such endpoint"})
        if not self.headers.get("Authorization"):
            return self._json(401, {"code": 401, "message": "unauthenticated"})
        slug = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if slug not in self.server.datasets:
            return self._json(404, {"code": 404, "message": f"Dataset {slug} not found"})
        self.send_response(302)
        self.send_header("Location", f"/storage/{slug}.zip")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        slug = self.path.removeprefix("/storage/").removesuffix(".zip")
        data = self.server.datasets.get(slug)
        if data is None:
            return self._json(404, {"code": 404, "message": "no such file"})
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        return None


@pytest.fixture
def kaggle_env(tmp_path, monkeypatch):
    """Point the client at localhost with test credentials; hide any real ones."""
    home = tmp_path / "home"
    home.mkdir()
    for var in (
        "KAGGLE_API_TOKEN",
        "KAGGLE_CONFIG_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY)


@pytest.fixture
def kaggle_server(kaggle_env):
    try:
        server = ThreadingHTTPServer(("127.0.0.1", 80), KaggleStub)
    except OSError as exc:
        pytest.skip(f"port 80 is not available for the local Kaggle stand-in: {exc}")
    server.seen, server.datasets = [], {"tester/chest-xrays": dataset_zip()}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def kaggle_spec(slug: str, name: str = "chest") -> SourceSpec:
    return parse_spec(
        name,
        {
            "kind": "kaggle",
            "location": slug,
            "species": "human",
            "body_part": "chest",
            "modality": "X-ray",
            "classes": {"NORMAL": {"disease": "normal"}, "PNEUMONIA": {"disease": "pneumonia"}},
        },
    )


def ingest_cfg() -> dict:
    params = load_params(
        REPO / "params.yaml",
        preset="micro",
        overrides=[
            "ingest.max_image_pixels=1000000",
            "ingest.workers=1",
            "presets.micro.ingest.phantoms_per_class=2",
        ],
    )
    return stage_config(params, "ingest")


def test_download_through_the_real_client_then_clean(kaggle_server, tmp_path):
    layout = DataLayout(tmp_path / "data")
    summary = materialize_specs([kaggle_spec("tester/chest-xrays")], layout, ingest_cfg())
    assert summary["sources"]["chest"]["status"] == "ok" and summary["failures"] == {}
    archive = layout.raw_source("chest") / "chest-xrays.zip"
    assert archive.read_bytes() == kaggle_server.datasets["tester/chest-xrays"]
    path, auth, body = kaggle_server.seen[0]
    assert path == DOWNLOAD_PATH and body == {"ownerSlug": "tester", "datasetSlug": "chest-xrays"}
    assert base64.b64decode(auth.split()[1]).decode() == f"{USER}:{KEY}"

    clean_raw(layout, ingest_cfg(), "{modality} of a {species} {body_part}, {disease}")
    manifest, rejects, _ = read_tables(layout)
    assert manifest.groupby("disease").size().to_dict() == {"normal": 3, "pneumonia": 3}
    assert rejects["source_file"].tolist() == ["chest-xrays.zip!chest_xray/README.md"]
    for file in layout.root.rglob("*"):  # the key is never written into the data directory
        assert not file.is_file() or KEY.encode() not in file.read_bytes()

    again = materialize_specs([kaggle_spec("tester/chest-xrays")], layout, ingest_cfg())
    assert again["sources"]["chest"]["status"] == "cached" and len(kaggle_server.seen) == 1


def test_unknown_slug_fails_clearly_and_other_sources_still_materialise(kaggle_server, tmp_path):
    layout = DataLayout(tmp_path / "data")
    specs = [kaggle_spec("tester/no-such-set", name="missing"), load_registry()["phantoms"]]
    summary = materialize_specs(specs, layout, ingest_cfg())
    error = summary["failures"]["missing"]
    assert "'missing'" in error and "not found" in error and "404" in error
    assert summary["sources"]["phantoms"]["status"] == "ok"
    assert set(summary["files"]) == {"phantoms"}
    assert not layout.raw_source("missing").exists()


def test_network_failure_is_a_clear_error(kaggle_server, tmp_path):
    kaggle_server.shutdown()
    kaggle_server.server_close()  # nothing listens on port 80 any more
    layout = DataLayout(tmp_path / "data")
    with pytest.raises(SourceFetchError, match="no source materialised") as caught:
        materialize_specs([kaggle_spec("tester/chest-xrays")], layout, ingest_cfg())
    assert "'chest'" in str(caught.value) and "network failure" in str(caught.value)


def test_missing_credentials_is_a_clear_error_naming_the_source(kaggle_env, monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    folder = tmp_path / "local" / "NORMAL"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 40), "gray").save(folder / "x.png")
    local = SourceSpec("local", "folder", str(folder.parent))
    layout = DataLayout(tmp_path / "data")
    summary = materialize_specs([kaggle_spec("tester/chest-xrays"), local], layout, ingest_cfg())
    assert "'chest'" in summary["failures"]["chest"]
    assert "no Kaggle credentials" in summary["failures"]["chest"]
    assert summary["files"] == {"local": 1}
    record = json.loads((layout.raw / "sources.json").read_text())
    assert record["chest"]["status"] == "failed" and record["local"]["status"] == "ok"
