"""Images -> features, the clean-fid way: the extractors (clean-fid's Inception-V3 from a file
already on disk, never downloaded; the domain classifier's penultimate layer) and the batch
conversions every extractor shares.

Every piece that decides a feature value is clean-fid's own: its resizer
(``make_resizer("PIL", False, "bicubic", size)``, i.e. ``build_resizer("clean")``) and its
Inception wrapper semantics, so numbers stay comparable with clean-fid's.
"""

from __future__ import annotations

import hashlib
import os
import platform
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from cleanfid import fid as cleanfid_fid
from cleanfid.resize import make_resizer

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
