"""The MLflow model registry for distilled consistency models.

Each model version is an ``mlflow.pyfunc`` model whose one artifact, ``pipeline``, is the saved
consistency pipeline directory (:func:`ops.distill.sampling.save_consistency_pipeline`). It is logged as
a *model from code* (a three-line script that builds :class:`ConsistencyPyfunc`), so loading it
never unpickles anything. The store is the project's (:func:`ops.tracking.mlflow_setup.setup_mlflow`: sqlite
and an artifact folder under the data directory, unless configured otherwise); the alias that
marks the served model is ``mlflow.champion_alias`` in params (default ``champion``).

pyfunc input (``model.predict(model_input, params=None)``; the logged signature says so):

- a ``pandas.DataFrame`` with a ``prompt`` column and optional columns ``steps``, ``guidance``
  (diffusers' guidance_scale, = w + 1), ``seed``, ``num_images`` and ``gamma`` (TCD sampling at
  that stochasticity; absent: the model's own sampler): one request per row;
- or a dict with the same keys (one request; its ``prompt`` may be a list of prompts).

Values missing from a request come from ``params`` (MLflow inference params with the same
names), whose defaults are steps=4, guidance=4.0, seed=0, num_images=1. The output is a list of
PNG-encoded images (``bytes``), request by request, prompt by prompt, ``num_images`` per prompt.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from ops.layout import DataLayout
from ops.tracking.mlflow_setup import flatten, setup_mlflow

DEFAULTS = {"steps": 4, "guidance": 4.0, "seed": 0, "num_images": 1}
PIP_REQUIREMENTS = [
    "torch==2.14.1",
    "diffusers==0.42.1",
    "transformers==5.24.0",
    "safetensors==0.8.0",
    "pillow==13.0.0",
    "pandas==3.1.1",
    "mlflow==3.17.2",
]
SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", "prompt"),
            ColSpec("long", "steps", required=False),
            ColSpec("double", "guidance", required=False),
            ColSpec("long", "seed", required=False),
            ColSpec("long", "num_images", required=False),
            ColSpec("double", "gamma", required=False),
        ]
    ),
    params=ParamSchema(
        [
            ParamSpec("steps", "long", DEFAULTS["steps"]),
            ParamSpec("guidance", "double", DEFAULTS["guidance"]),
            ParamSpec("seed", "long", DEFAULTS["seed"]),
            ParamSpec("num_images", "long", DEFAULTS["num_images"]),
        ]
    ),
)
_MODEL_CODE = """\
# Written by ops.distill.registry: the MLflow model-from-code of an LLCM consistency pipeline.
import mlflow

from ops.distill.registry import ConsistencyPyfunc

mlflow.models.set_model(ConsistencyPyfunc())
"""
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class ModelNotFoundError(FileNotFoundError):
    """A model URI that names nothing: no such directory, registered model, version or alias."""


class ConsistencyPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: text prompts in, PNG bytes out (see the module docstring)."""

    def load_context(self, context) -> None:
        from ops.distill.sampling import load_consistency_pipeline

        self.pipe = load_consistency_pipeline(context.artifacts["pipeline"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        from ops.distill.sampling import generate

        out: list[bytes] = []
        for request in _requests(model_input, params or {}):
            images, _ = generate(
                self.pipe,
                request["prompt"],
                steps=int(request["steps"]),
                guidance_scale=float(request["guidance"]),
                seed=int(request["seed"]),
                num_images=int(request["num_images"]),
                gamma=None if request.get("gamma") is None else float(request["gamma"]),
            )
            out.extend(_png(image) for image in images)
        return out


def _requests(model_input: Any, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    defaults = {key: params.get(key, value) for key, value in DEFAULTS.items()}
    if isinstance(model_input, Mapping):
        rows = [dict(model_input)]
    elif isinstance(model_input, pd.DataFrame):
        rows = model_input.to_dict(orient="records")
    else:
        raise ValueError(f"unsupported model input of type {type(model_input).__name__}")
    requests = []
    for row in rows:
        if not row.get("prompt"):
            raise ValueError("every request needs a 'prompt'")
        request = dict(defaults)
        request.update(
            {k: v for k, v in row.items() if not (pd.api.types.is_scalar(v) and pd.isna(v))}
        )
        requests.append(request)
    return requests


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _client(layout: DataLayout | None, params: Mapping[str, Any] | None):
    if layout is not None:
        setup_mlflow(layout, dict(params or {}))
    return mlflow.MlflowClient()


def champion_alias(params: Mapping[str, Any] | None) -> str:
    return str(((params or {}).get("mlflow") or {}).get("champion_alias") or "champion")


# --------------------------------------------------------------------------------------------
# Registering and promoting
# --------------------------------------------------------------------------------------------


def register_model(
    model_dir: str | Path,
    name: str,
    params: Mapping[str, Any],
    layout: DataLayout,
    metrics: Mapping[str, float] | None = None,
    set_champion: bool = False,
):
    """Log ``model_dir`` as a pyfunc model, register it as a new version of ``name``.

    The run (the active one, e.g. the trainer's, else a new run ``register-<name>`` in the
    project's experiment) gets the ``distill`` and ``sampling`` params (those it lacks), the
    model's ``llcm.json`` metadata and ``metrics``; the version gets the
    metadata as tags. ``set_champion`` moves the champion alias to the new version. Returns the
    ``ModelVersion``.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved pipeline directory")
    experiment_id = setup_mlflow(layout, dict(params))
    meta_file = model_dir / "llcm.json"
    metadata = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    logged = {
        **flatten({k: params.get(k) for k in ("distill", "sampling") if k in params}),
        **flatten(metadata, "model."),
        "preset": params.get("preset"),
    }
    code = layout.tmp / "mlflow_model_code" / "llcm_pyfunc.py"
    code.parent.mkdir(parents=True, exist_ok=True)
    code.write_text(_MODEL_CODE)

    active = mlflow.active_run()
    run = active or mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{name}")
    try:
        # Params are write-once: in the trainer's run, keep what it already logged.
        present = mlflow.get_run(run.info.run_id).data.params if active else {}
        mlflow.log_params({k: str(v)[:6000] for k, v in logged.items() if k not in present})
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        with warnings.catch_warnings():
            # An input example would make MLflow run a generation at logging time.
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(code),
                artifacts={"pipeline": str(model_dir)},
                registered_model_name=name,
                pip_requirements=PIP_REQUIREMENTS,
                signature=SIGNATURE,
            )
    finally:
        if active is None:
            mlflow.end_run()
    client = mlflow.MlflowClient()
    version = client.get_model_version(name, str(info.registered_model_version))
    for key, value in metadata.items():
        client.set_model_version_tag(name, version.version, key, str(value))
    if set_champion:
        _set_alias(client, name, version.version, champion_alias(params))
    return client.get_model_version(name, version.version)


def _set_alias(client, name: str, version: str | int, alias: str) -> None:
    client.get_model_version(name, str(version))  # fails clearly if there is no such version
    client.set_registered_model_alias(name, alias, str(version))


def set_champion(
    name: str,
    version: str | int,
    *,
    layout: DataLayout | None = None,
    params: Mapping[str, Any] | None = None,
) -> None:
    """Point the champion alias (``mlflow.champion_alias``) of ``name`` at ``version``.

    With ``layout`` the project's store is set up first; otherwise the current MLflow URIs are
    used.
    """
    client = _client(layout, params)
    try:
        _set_alias(client, name, version, champion_alias(params))
    except mlflow.exceptions.MlflowException as exc:
        raise ModelNotFoundError(
            f"cannot set champion of {name!r} to version {version}: {exc.message}"
        ) from exc


# --------------------------------------------------------------------------------------------
# Resolving and loading
# --------------------------------------------------------------------------------------------


def _parse_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of ``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""
    match = _URI.match(uri)
    if not match:
        raise ValueError(
            f"model URI {uri!r} is neither models:/<name>@<alias>, models:/<name>/<version> "
            "nor an existing pipeline directory"
        )
    return match["name"], match["alias"], match["version"]


def _registered_version(client, uri: str) -> tuple[str, str]:
    name, alias, version = _parse_uri(uri)
    try:
        model = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        known = sorted(m.name for m in client.search_registered_models())
        raise ModelNotFoundError(
            f"no registered model {name!r} (registered: {', '.join(known) or 'none'})"
        ) from None
    if alias is not None:
        if alias not in model.aliases:
            raise ModelNotFoundError(
                f"registered model {name!r} has no alias {alias!r} "
                f"(aliases: {', '.join(sorted(model.aliases)) or 'none'})"
            )
        return name, str(model.aliases[alias])
    try:
        client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        raise ModelNotFoundError(f"registered model {name!r} has no version {version}") from None
    return name, version


def download_model(
    uri: str, layout: DataLayout | None = None, params: Mapping[str, Any] | None = None
) -> Path:
    """The local MLflow model directory (with ``MLmodel``) of a registry URI, cached.

    Downloads go to ``<data>/mlflow/downloads/<name>/v<version>`` (never the system temp
    folder) and are reused: a registered version's files never change.
    """
    _parse_uri(uri)  # a malformed URI fails before any store is touched
    layout = layout or DataLayout.from_env()
    client = _client(layout, params)
    name, version = _registered_version(client, uri)
    dst = layout.mlflow_db.parent / "downloads" / name / f"v{version}"
    if (dst / "MLmodel").is_file():
        return dst
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}", dst_path=str(partial)
    )
    if not (partial / "MLmodel").is_file():
        raise ModelNotFoundError(f"{uri} (version {version}) has no MLmodel file")
    partial.rename(dst)
    return dst


def resolve_model_uri(
    uri: str | Path, layout: DataLayout | None = None, params: Mapping[str, Any] | None = None
) -> Path:
    """A local consistency pipeline directory for ``models:/<name>@<alias>``,
    ``models:/<name>/<version>`` or a path to such a directory."""
    text = str(uri)
    if not text.startswith("models:/"):
        path = Path(text).expanduser()
        if (path / "model_index.json").is_file():
            return path.resolve()
        if path.exists():
            raise ModelNotFoundError(
                f"{path} is not a saved pipeline directory (no model_index.json)"
            )
        raise ModelNotFoundError(
            f"no model {text!r}: not a directory, and not a registry URI (models:/<name>@<alias>)"
        )
    root = download_model(text, layout, params)
    spec = mlflow.models.Model.load(str(root / "MLmodel")).flavors["python_function"]
    return root / spec["artifacts"]["pipeline"]["path"]


def load_pyfunc(
    uri: str,
    layout: DataLayout | None = None,
    params: Mapping[str, Any] | None = None,
    suppress_warnings: bool = False,
):
    """``mlflow.pyfunc.load_model`` of a registry URI, from the download cache in the data dir.

    ``suppress_warnings`` skips MLflow's check of the model's pip requirements against the
    environment (it scans every installed distribution, seconds on first use).
    """
    root = download_model(uri, layout, params)
    return mlflow.pyfunc.load_model(str(root), suppress_warnings=suppress_warnings)
