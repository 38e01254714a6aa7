"""Image-quality metrics of the benchmark: FID, KID and class fidelity, computed the clean-fid way.

Why features, not folders: the benchmark generates ~175k images (models x steps x classes x
images); writing them all to disk only to read them back is wasted work. Generation therefore
streams uint8 batches into :func:`extract_features`, and the per-cell statistics are kept in a
:class:`FeatureStats` accumulator that can be merged exactly across shards, processes and
classes. The numbers stay comparable with clean-fid because every piece that decides the value
is clean-fid's own: its resizer (``make_resizer("PIL", False, "bicubic", size)``, i.e. what
``build_resizer("clean")`` does for Inception at 299x299), its Inception wrapper semantics,
``cleanfid.fid.frechet_distance`` and ``cleanfid.fid.kernel_distance``.

Definitions (features ``x`` of generated images, ``y`` of real ones, dimension ``d``):

* FID  = ||mu_x - mu_y||^2 + Tr(S_x + S_y - 2 (S_x S_y)^(1/2)), the Frechet distance between
  Gaussians fitted to the two feature sets (S: unbiased sample covariance, as ``np.cov``).
  Its sample estimate is biased upwards by O(1/n), and with n <= d the sample covariance has
  rank <= n - 1 < d, so the matrix square root is ill-conditioned: every result carries ``n``
  and a warning in that case.
* KID  = MMD^2 with the polynomial kernel k(a, b) = (a.b / d + 1)^3, unbiased estimate averaged
  over random subsets (clean-fid's ``kernel_distance``). Unbiased, so usable with few images.
* class fidelity = share of generated images that the domain classifier assigns to the class
  in the prompt.

Feature extractors: ``inception`` (clean-fid's TorchScript Inception-V3 pool3, 2048-d; only from
a weights file that is already on disk, never downloaded) and ``domain`` (the penultimate layer
of the MedImgs classifier of :mod:`ops.classifier`; the default of the offline ``tiny`` preset).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cleanfid import fid as cleanfid_fid
from cleanfid.resize import make_resizer

from ops.layout import DataLayout

INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
    + INCEPTION_FILENAME
)
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048


def cleanfid_inception_path() -> Path:
    """Where clean-fid itself looks for the Inception weights (``cleanfid.features``): a fixed
    folder, ``/tmp`` (``./`` on Windows), not ``tempfile.gettempdir()``."""
    folder = "./" if platform.system() == "Windows" else "/tmp"
    return Path(folder) / INCEPTION_FILENAME


# --------------------------------------------------------------------------------------------
# feature extractors
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureExtractor:
    """A feature network plus what clean-fid needs to use it as ``custom_feat_extractor``.

    ``fn`` follows clean-fid's convention: it takes a float tensor ``(B, 3, S, S)`` with values
    in [0, 255] (already resized to ``input_size`` by ``resize``) and returns a ``(B, dim)``
    tensor. ``resize`` is the per-image clean-fid resizer (HWC uint8/float -> HWC float32 in
    [0, 255]); pass it as ``custom_fn_resize`` to ``cleanfid.fid.compute_fid``.
    ``fingerprint`` changes whenever the features would (weights, input size).
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    input_size: int
    dim: int
    fingerprint: str
    resize: Callable[[np.ndarray], np.ndarray] = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.resize is None:
            object.__setattr__(self, "resize", clean_resizer(self.input_size))


def clean_resizer(size: int) -> Callable[[np.ndarray], np.ndarray]:
    """clean-fid's "clean" resize (PIL bicubic on float channels, no quantisation) to ``size``.

    ``build_resizer("clean")`` is exactly this with size 299 (Inception's input). A same-size
    resize is the identity, so the domain extractor at the preset resolution sees the pixels.
    """
    return make_resizer("PIL", False, "bicubic", (size, size))


class _InceptionFeatures(torch.nn.Module):
    """clean-fid's ``InceptionV3W(resize_inside=False)`` forward, loaded from an explicit path.

    clean-fid's own class only accepts a folder and may download into it; here the file must
    exist and nothing is fetched. Input: (B, 3, 299, 299) in [0, 255]; output: pool3, 2048-d.
    """

    def __init__(self, path: Path, device: torch.device) -> None:
        super().__init__()
        # TorchScript archive supplied by the operator (clean-fid's own format), not a pickle.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*jit.*")
            self.base = torch.jit.load(str(path), map_location=device).eval()
        self.layers = self.base.layers

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] != INCEPTION_SIZE or x.shape[3] != INCEPTION_SIZE:
            raise ValueError(
                f"Inception expects {INCEPTION_SIZE}x{INCEPTION_SIZE} inputs, got "
                f"{tuple(x.shape[2:])}: resize with FeatureExtractor.resize first"
            )
        x = (x.float() - 128) / 128
        return self.layers.forward(x).view((x.shape[0], INCEPTION_DIM))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_inception_weights(configured: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: ``benchmark.inception_weights`` if set, else clean-fid's
    fixed path. Never downloads; a missing file is a clear error saying how to provide it."""
    candidates = [Path(configured).expanduser()] if configured else []
    candidates.append(cleanfid_inception_path())
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"clean-fid's Inception weights ({INCEPTION_FILENAME}) were not found (looked at: "
        f"{tried}). This project never downloads them. On a machine with internet access fetch "
        f"{INCEPTION_URL}, copy the file here and set benchmark.inception_weights to its path "
        f"(e.g. `--set benchmark.inception_weights=/path/{INCEPTION_FILENAME}`), or put it at "
        f"{cleanfid_inception_path()}; or use benchmark.feature_extractor=domain."
    )


def inception_extractor(
    weights: str | os.PathLike | None = None, device: torch.device | str = "cpu"
) -> FeatureExtractor:
    """clean-fid's Inception-V3 feature extractor (2048-d), from a local weights file only."""
    path = find_inception_weights(weights)
    device = torch.device(device)
    model = _InceptionFeatures(path, device)
    return FeatureExtractor(
        name="inception",
        fn=model,
        input_size=INCEPTION_SIZE,
        dim=INCEPTION_DIM,
        fingerprint=f"inception:{_file_sha256(path)}",
        resize=clean_resizer(INCEPTION_SIZE),
    )


def load_extractor(
    name: str,
    layout: DataLayout,
    params: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> FeatureExtractor:
    """The extractor named in ``benchmark.feature_extractor`` (``domain`` | ``inception``)."""
    if name == "inception":
        weights = ((params or {}).get("benchmark") or {}).get("inception_weights")
        return inception_extractor(weights, device)
    if name == "domain":
        from ops.classifier import feature_extractor, load_domain_classifier

        model, _ = load_domain_classifier(layout, device=device)
        return feature_extractor(model)
    raise ValueError(f"unknown feature extractor {name!r}; use 'domain' or 'inception'")


# --------------------------------------------------------------------------------------------
# images -> features
# --------------------------------------------------------------------------------------------
def to_uint8_hwc(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """A batch as uint8 ``(B, H, W, 3)``: accepts uint8 NHWC arrays or uint8 NCHW tensors, and
    float images in [-1, 1] (NCHW tensors, as a VAE decodes them), which are quantised the way
    saving a PNG would, so generated and real (JPEG) images go through the same path."""
    if isinstance(images, torch.Tensor):
        x = images.detach().cpu()
        if x.is_floating_point():
            x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if x.dtype != torch.uint8:
            raise TypeError(f"expected uint8 or float images, got {x.dtype}")
        if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
            x = x.permute(0, 2, 3, 1)
        arr = x.numpy()
    else:
        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            raise TypeError(f"expected a uint8 array (B, H, W, 3), got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"expected a batch (B, H, W, C), got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] != 3:
        raise ValueError(f"expected RGB images, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


@torch.no_grad()
def extract_features(
    images: np.ndarray | torch.Tensor,
    extractor: FeatureExtractor,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Features ``(B, dim)`` (float32, as clean-fid returns them) of a batch of images.

    Each image is resized on its own with the extractor's clean-fid resizer and the batch is
    passed as float in [0, 255], exactly what ``compute_fid`` feeds a custom extractor.
    """
    arr = to_uint8_hwc(images)
    out: list[np.ndarray] = []
    for start in range(0, len(arr), batch_size):
        chunk = [
            extractor.resize(img).transpose((2, 0, 1)) for img in arr[start : start + batch_size]
        ]
        batch = torch.from_numpy(np.stack(chunk).astype(np.float32, copy=False))
        out.append(cleanfid_fid.get_batch_features(batch, extractor.fn, torch.device(device)))
    if not out:
        return np.zeros((0, extractor.dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def load_images(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Image files as a uint8 ``(B, H, W, 3)`` batch, decoded like clean-fid (PIL, RGB)."""
    from PIL import Image

    return np.stack([np.array(Image.open(p).convert("RGB")) for p in paths])


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
@dataclass
class FeatureStats:
    """Running first and second moments of features, in float64.

    Keeps n, sum(x) and sum(x x^T) rather than mean and covariance, because sums merge by
    addition: stats of shards (batches, processes, GPUs, classes) ``merge`` into the stats of
    the union, bit-for-bit equal to accumulating the same batches in the same order.
    ``covariance`` is the unbiased estimate, equal to ``np.cov(x, rowvar=False)``.
    """

    dim: int
    n: int = 0
    sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    sum_outer: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.sum is None:
            self.sum = np.zeros(self.dim, dtype=np.float64)
        if self.sum_outer is None:
            self.sum_outer = np.zeros((self.dim, self.dim), dtype=np.float64)
        self.sum = np.asarray(self.sum, dtype=np.float64)
        self.sum_outer = np.asarray(self.sum_outer, dtype=np.float64)
        if self.sum.shape != (self.dim,) or self.sum_outer.shape != (self.dim, self.dim):
            raise ValueError("FeatureStats sums do not match dim")

    @classmethod
    def from_features(cls, feats: np.ndarray) -> FeatureStats:
        feats = np.atleast_2d(np.asarray(feats))
        stats = cls(dim=feats.shape[1])
        stats.update(feats)
        return stats

    def update(self, feats: np.ndarray | torch.Tensor) -> FeatureStats:
        """Add a batch ``(B, dim)`` of features; returns self."""
        if isinstance(feats, torch.Tensor):
            feats = feats.detach().cpu().numpy()
        x = np.atleast_2d(np.asarray(feats, dtype=np.float64))
        if x.shape[1] != self.dim:
            raise ValueError(f"features have dim {x.shape[1]}, stats expect {self.dim}")
        self.n += x.shape[0]
        self.sum += x.sum(axis=0)
        self.sum_outer += x.T @ x
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """The stats of the union of both feature sets (a new object)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dims {self.dim} and {other.dim}")
        return FeatureStats(
            self.dim, self.n + other.n, self.sum + other.sum, self.sum_outer + other.sum_outer
        )

    @classmethod
    def merge_all(cls, stats: Iterable[FeatureStats]) -> FeatureStats:
        items = list(stats)
        if not items:
            raise ValueError("nothing to merge")
        out = items[0].merge(cls(items[0].dim))
        for item in items[1:]:
            out = out.merge(item)
        return out

    @property
    def mean(self) -> np.ndarray:
        if self.n < 1:
            raise ValueError("mean of empty FeatureStats")
        return self.sum / self.n

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased: (sum x x^T - n mu mu^T) / (n - 1). float64 keeps the cancellation harmless
        for network features (means and spreads of similar magnitude)."""
        if self.n < 2:
            raise ValueError(f"covariance needs at least 2 samples, have {self.n}")
        mu = self.mean
        cov = (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return (cov + cov.T) / 2

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "n": np.asarray(self.n, dtype=np.int64),
            "sum": self.sum,
            "sum_outer": self.sum_outer,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> FeatureStats:
        total = np.asarray(arrays["sum"], dtype=np.float64)
        return cls(total.shape[0], int(arrays["n"]), total, arrays["sum_outer"])


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), by clean-fid's own function (so the
    numbers match clean-fid's, including its eps fallback for a singular product)."""
    # clean-fid prints its singular-product fallback and passes scipy's deprecated ``disp``
    with contextlib.redirect_stdout(None), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*disp.*")
        return float(cleanfid_fid.frechet_distance(mu1, sigma1, mu2, sigma2))


def fid_from_stats(gen: FeatureStats, ref: FeatureStats) -> float:
    return frechet_distance(gen.mean, gen.covariance, ref.mean, ref.covariance)


@contextlib.contextmanager
def _seeded_numpy_global(seed: int) -> Iterator[None]:
    """clean-fid's kernel_distance draws subsets from numpy's global RNG: seed it for the call
    (same seed, same number) and restore the caller's state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def kid(
    feats1: np.ndarray,
    feats2: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """KID: unbiased MMD^2 with kernel (a.b/d + 1)^3, averaged over ``num_subsets`` random subsets
    of size m = min(n1, n2, max_subset_size); clean-fid's ``kernel_distance``, seeded."""
    feats1 = np.asarray(feats1, dtype=np.float64)
    feats2 = np.asarray(feats2, dtype=np.float64)
    if min(len(feats1), len(feats2)) < 2:
        raise ValueError("KID needs at least 2 feature vectors on each side")
    with _seeded_numpy_global(seed):
        return float(cleanfid_fid.kernel_distance(feats1, feats2, num_subsets, max_subset_size))


@dataclass
class CellMetrics:
    """FID (and KID when features are at hand) of one benchmark cell, with its sample sizes."""

    fid: float
    n_gen: int
    n_ref: int
    feature_dim: int
    kid: float | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fid": self.fid,
            "kid": self.kid,
            "n": self.n_gen,
            "n_ref": self.n_ref,
            "feature_dim": self.feature_dim,
            "warnings": "; ".join(self.warnings),
        }


def sample_size_warnings(n_gen: int, n_ref: int, dim: int) -> list[str]:
    """A warning for each side whose covariance cannot be full rank (rank <= n - 1 < dim)."""
    out = []
    for side, n in (("generated", n_gen), ("reference", n_ref)):
        if n <= dim:
            out.append(f"{side} n={n} <= feature dim {dim}: covariance rank-deficient, FID biased")
    return out


def evaluate_cell(
    gen: FeatureStats,
    ref: FeatureStats,
    gen_feats: np.ndarray | None = None,
    ref_feats: np.ndarray | None = None,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> CellMetrics:
    """FID from the two accumulators; KID too when both feature sets are given."""
    result = CellMetrics(
        fid=fid_from_stats(gen, ref),
        n_gen=gen.n,
        n_ref=ref.n,
        feature_dim=gen.dim,
        warnings=sample_size_warnings(gen.n, ref.n, gen.dim),
    )
    if gen_feats is not None and ref_feats is not None:
        if min(len(gen_feats), len(ref_feats)) >= 2:
            result.kid = kid(gen_feats, ref_feats, kid_subsets, kid_subset_size, seed)
        else:
            result.warnings.append("KID skipped: fewer than 2 images on a side")
    return result


def class_fidelity(predicted: np.ndarray | Sequence[int], target: int | np.ndarray) -> float:
    """Share of generated images whose predicted class (domain classifier) is the prompted one."""
    pred = np.asarray(predicted)
    if pred.size == 0:
        raise ValueError("class fidelity of an empty set")
    return float(np.mean(pred == np.asarray(target)))


# --------------------------------------------------------------------------------------------
# reference statistics of the real test split, cached in the data directory
# --------------------------------------------------------------------------------------------
@dataclass
class Reference:
    """Real-image statistics of one class: moments for FID, the features themselves for KID."""

    class_name: str
    stats: FeatureStats
    feats: np.ndarray
    fingerprint: str


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "class"


def reference_path(layout: DataLayout, extractor_name: str, class_name: str) -> Path:
    return layout.reports / "fid_refs" / extractor_name / f"{_slug(class_name)}.npz"


def resolve_image_path(layout: DataLayout, rel: str) -> Path:
    """Manifest paths are relative to the data directory."""
    path = Path(rel)
    if path.is_absolute():
        return path
    primary = layout.root / path
    return primary if primary.exists() else layout.medimgs / path


def reference_fingerprint(rows: Any, extractor: FeatureExtractor) -> str:
    """Hash of what decides the reference stats: the class's images (content-hash ids and
    paths) and the extractor (weights, input size, resize)."""
    items = sorted(zip(rows["image_id"].astype(str), rows["path"].astype(str), strict=True))
    payload = {
        "extractor": extractor.fingerprint,
        "input_size": extractor.input_size,
        "resize": "clean:PIL-bicubic-float",
        "images": items,
    }
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def reference_stats(
    layout: DataLayout,
    extractor: FeatureExtractor,
    classes: Sequence[str] | None = None,
    *,
    split: str = "test",
    batch_size: int = 64,
    manifest: Any = None,
    device: torch.device | str = "cpu",
) -> dict[str, Reference]:
    """Per-class statistics of the real ``split`` images, cached at
    ``reports/fid_refs/<extractor>/<class>.npz`` (mu, sigma, n, sums, features, fingerprint)
    and recomputed when the fingerprint no longer matches. Pooled stats over classes are
    ``FeatureStats.merge_all`` of these."""
    import pandas as pd

    df = manifest if manifest is not None else pd.read_parquet(layout.manifest)
    df = df[df["split"] == split]
    names = list(classes) if classes is not None else sorted(df["class_name"].unique())
    out: dict[str, Reference] = {}
    for name in names:
        rows = df[df["class_name"] == name].sort_values("image_id")
        if rows.empty:
            raise ValueError(f"class {name!r} has no {split!r} images in the manifest")
        fingerprint = reference_fingerprint(rows, extractor)
        path = reference_path(layout, extractor.name, name)
        if path.is_file():
            with np.load(path, allow_pickle=False) as cached:
                if str(cached["fingerprint"]) == fingerprint and str(cached["class_name"]) == name:
                    out[name] = Reference(
                        name, FeatureStats.from_arrays(cached), cached["feats"], fingerprint
                    )
                    continue
        stats = FeatureStats(extractor.dim)
        feats = []
        paths = [resolve_image_path(layout, p) for p in rows["path"]]
        for start in range(0, len(paths), batch_size):
            batch = extract_features(
                load_images(paths[start : start + batch_size]), extractor, batch_size, device
            )
            stats.update(batch)
            feats.append(batch)
        all_feats = np.concatenate(feats)
        arrays: dict[str, np.ndarray] = {
            "mu": stats.mean,
            "sigma": stats.covariance if stats.n > 1 else np.zeros((stats.dim, stats.dim)),
            **stats.to_arrays(),
            "feats": all_feats,
            "fingerprint": np.asarray(fingerprint),
            "class_name": np.asarray(name),
            "extractor": np.asarray(extractor.name),
        }
        _save_npz(path, **arrays)
        out[name] = Reference(name, stats, all_feats, fingerprint)
    return out
