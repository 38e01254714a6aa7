"""A phantom's pixels as MedImgs stores them, without writing a source tree or a data directory.

Why: checks that read findings from pixels (``ops.eval.findings``) must see what the pipeline's
consumers see, i.e. after the family's storage recipe (16-bit PNG, DICOM windowing,
MONOCHROME1, CMYK JPEG, palette PNG ...) and cleaning's decode -> shorter side to the
resolution (Lanczos) -> centre crop -> JPEG. Those steps shrink small findings to a pixel or two
and blur them, so a check validated on the drawer's float output would overstate itself.
Same code path as ``ops.data.cleaning.worker.decode_item``, minus files and manifest.
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath

import numpy as np
from PIL import Image

from ops.data.cleaning.decode import decode
from ops.data.cleaning.normalize import fit_square, jpeg_bytes
from ops.data.sources.phantoms import CLASS_KEYS, draw_phantom
from ops.data.sources.sniff import HEAD_BYTES, guess_format

MAX_PIXELS = 50_000_000


def _decoded(path: str, data: bytes) -> Image.Image:
    name = PurePosixPath(path.split("!")[-1]).name
    return decode(data, guess_format(data[:HEAD_BYTES], name, len(data)), MAX_PIXELS).image


def stored_phantom(
    key: str, index: int, seed: int, resolution: int = 64, jpeg_quality: int = 95
) -> np.ndarray:
    """uint8 (resolution, resolution, 3) RGB of image ``index`` of phantom class ``key``."""
    fam, _ = CLASS_KEYS[key]
    (path, data), *_ = fam.store(
        key, index, draw_phantom(key, index, seed), f"{seed}/{key}/{index}"
    )
    square = fit_square(_decoded(path, data), resolution)
    stored = Image.open(io.BytesIO(jpeg_bytes(square, jpeg_quality)))
    return np.asarray(stored.convert("RGB"), dtype=np.uint8)
