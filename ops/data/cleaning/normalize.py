"""Bring a decoded picture to the dataset's square resolution and give it a content id.

Resize/crop policy: scale so the *shorter* side equals the resolution (Lanczos, which
antialiases when shrinking), then crop the centre square. Why: the models take square inputs;
stretching would distort anatomy (a heart's width is the diagnosis in cardiomegaly); padding
would add borders that a generator learns as if they were anatomy; medical images centre their
subject, so the centre crop loses only margins.

The image id is a hash of the normalised pixels, so two files with identical pixels (an exact
copy, or a PNG re-saved as BMP or TIFF) get the same id whatever their bytes; lossy re-encodes
(JPEG at another quality) change pixels and are not merged.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

ID_HEX = 16  # 64 bits: collisions are negligible for millions of images


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` then centre-crop to ``size`` x ``size``."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def image_id(image: Image.Image) -> str:
    """Content hash of the normalised RGB pixels (and their shape)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    digest = hashlib.sha256(f"{pixels.shape}".encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()[:ID_HEX]


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=int(quality))
    return buf.getvalue()
