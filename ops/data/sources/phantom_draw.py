"""Drawing synthetic medical-like images (phantoms) with numpy.

Each family draws a healthy and a diseased variant whose difference is visible and measurable
(a wider heart, a bright blob, red dots, a dark irregular border, a gap across a bone, ring
forms inside cells, nodules, a bright stone). Pose, size, intensity, texture and noise vary
within a class so that a generator cannot learn a class by memorising one picture.

Every drawer takes a seeded ``numpy.random.Generator`` and returns float32 in [0, 1]: (H, W)
for grey modalities, (H, W, 3) for colour ones. Nothing here touches the disk.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, gaussian_filter1d

Array = np.ndarray
Drawer = Callable[[np.random.Generator, bool], Array]


# geometry helpers ------------------------------------------------------------------------------
def posed_grid(
    rng: np.random.Generator,
    h: int,
    w: int,
    rotate_deg: float = 6.0,
    scale: tuple[float, float] = (0.9, 1.05),
    shift: float = 0.05,
) -> tuple[Array, Array]:
    """Canonical coordinates (y, x) of every pixel under a random pose.

    The shorter side spans [-1, 1]; shapes drawn in canonical coordinates therefore appear
    rotated, scaled and shifted, which gives within-class variety for free.
    """
    half = min(h, w) / 2.0
    y = ((np.arange(h, dtype=np.float32) - (h - 1) / 2.0) / half)[:, None]
    x = ((np.arange(w, dtype=np.float32) - (w - 1) / 2.0) / half)[None, :]
    theta = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg))
    s = rng.uniform(*scale)
    dy, dx = rng.uniform(-shift, shift, size=2)
    y, x = (y - np.float32(dy)) / np.float32(s), (x - np.float32(dx)) / np.float32(s)
    cos, sin = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    return cos * y - sin * x, sin * y + cos * x


def ellipse(
    y: Array, x: Array, cy: float, cx: float, ry: float, rx: float, edge: float = 0.06
) -> Array:
    """Soft-edged ellipse mask in [0, 1] (a linear ramp ``edge`` wide in normalised radius)."""
    d = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
    return np.clip((1.0 - d) / edge + 0.5, 0.0, 1.0)


def disc(
    img: Array,
    y: Array,
    x: Array,
    centre: tuple[float, float],
    radius: tuple[float, float],
    colour: Array | float,
    edge: float = 0.3,
) -> Array:
    """Paint a small soft ellipse (radii ``radius`` = (ry, rx)) computing only its pixel box.

    The posed grid is affine in pixel coordinates, so the canonical centre maps back to a pixel
    by one 2x2 solve; small shapes then cost their own area, not the whole image's.
    """
    jac = np.array([[y[1, 0] - y[0, 0], y[0, 1] - y[0, 0]], [x[1, 0] - x[0, 0], x[0, 1] - x[0, 0]]])
    row, col = np.linalg.solve(jac, [centre[0] - y[0, 0], centre[1] - x[0, 0]])
    unit = min(np.hypot(jac[0, 0], jac[1, 0]), np.hypot(jac[0, 1], jac[1, 1]))
    reach = max(radius) * (1.0 + edge) / unit + 2.0
    r0, r1 = max(0, int(row - reach)), min(img.shape[0], int(row + reach) + 2)
    c0, c1 = max(0, int(col - reach)), min(img.shape[1], int(col + reach) + 2)
    if r0 >= r1 or c0 >= c1:
        return img
    box = (slice(r0, r1), slice(c0, c1))
    mask = ellipse(y[box], x[box], centre[0], centre[1], radius[0], radius[1], edge)
    colour = np.asarray(colour, dtype=np.float32)
    img[box] = paint(img[box], mask, colour[box] if colour.ndim >= 2 else colour)
    return img


def band(dist: Array, half_width: float, edge: float = 0.01) -> Array:
    """Soft mask of the points within ``half_width`` of a line, given their distance to it."""
    return np.clip((half_width - np.abs(dist)) / edge + 0.5, 0.0, 1.0)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> Array:
    """Low-frequency texture with unit standard deviation.

    Drawn on a coarse grid and upsampled bilinearly: the same look as blurring full-size white
    noise by ``sigma`` at a fraction of the cost, which keeps thousands of phantoms in seconds.
    """
    step = max(1.0, sigma / 1.5)
    coarse = (int(np.ceil(shape[0] / step)) + 3, int(np.ceil(shape[1] / step)) + 3)
    field = gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), min(sigma, 1.5))
    size = (round(coarse[1] * step), round(coarse[0] * step))
    field = np.asarray(Image.fromarray(field).resize(size, Image.Resampling.BILINEAR))
    field = field[: shape[0], : shape[1]]
    return field / (field.std() + 1e-6)


def paint(img: Array, mask: Array, colour: Array | float) -> Array:
    """Alpha-blend a colour (a value, an RGB triple or a full-size array) into ``img`` in place
    where ``mask`` is non-zero; only the mask's bounding box is touched, which keeps many small
    spots cheap."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return img
    cols = np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    m = mask[box][..., None] if img.ndim == 3 else mask[box]
    colour = np.asarray(colour, dtype=np.float32)
    if colour.ndim >= 2:
        colour = colour[box]
    img[box] = img[box] * (1.0 - m) + colour * m
    return img


def finish(rng: np.random.Generator, img: Array, blur: float, noise: tuple[float, float]) -> Array:
    """Blur (optics), random gain and gamma (exposure), sensor noise; clip to [0, 1]."""
    if blur > 0:
        img = gaussian_filter1d(gaussian_filter1d(img, blur, axis=0), blur, axis=1)
    img = np.power(np.clip(img, 0.0, 1.0), np.float32(rng.uniform(0.85, 1.15)))
    img *= np.float32(rng.uniform(0.9, 1.05))
    img = img + rng.uniform(*noise) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _spots(
    rng: np.random.Generator,
    img: Array,
    y: Array,
    x: Array,
    count: int,
    within: float,
    radius: tuple[float, float],
    colour: Array | float,
) -> Array:
    """Paint ``count`` small discs at random inside a circle of radius ``within``."""
    for _ in range(count):
        r = within * np.sqrt(rng.uniform(0, 1))
        a = rng.uniform(0, 2 * np.pi)
        rad = rng.uniform(*radius)
        disc(img, y, x, (r * np.sin(a), r * np.cos(a)), (rad, rad), colour)
    return img


# families ---------------------------------------------------------------------------------------
def chest_xray(rng: np.random.Generator, cardiomegaly: bool, size: int = 144) -> Array:
    """PA chest radiograph; cardiomegaly widens the heart silhouette (cardiothoracic ratio
    above ~0.5 against ~0.4), the criterion radiologists measure."""
    y, x = posed_grid(rng, size, size)
    img = np.full((size, size), 0.04, np.float32)
    img = paint(img, ellipse(y, x, 0.05, 0.0, 0.98, 0.82, edge=0.08), 0.55)
    lung_ry = rng.uniform(0.55, 0.65)
    for side in (-1, 1):
        img = paint(img, ellipse(y, x, -0.08, side * 0.38, lung_ry, 0.27, edge=0.12), 0.16)
    ribs = (np.sin(y * rng.uniform(16, 20) + 2.5 * x**2) > 0.65).astype(np.float32)
    lungs = np.maximum(
        ellipse(y, x, -0.08, -0.38, lung_ry, 0.27), ellipse(y, x, -0.08, 0.38, lung_ry, 0.27)
    )
    img = img + 0.09 * ribs * lungs
    img = paint(img, band(x, 0.07, edge=0.03), 0.72)  # spine and mediastinum
    heart_rx = rng.uniform(0.4, 0.48) if cardiomegaly else rng.uniform(0.22, 0.28)
    heart_ry = rng.uniform(0.27, 0.32) if cardiomegaly else rng.uniform(0.22, 0.26)
    img = paint(img, ellipse(y, x, 0.24, 0.08, heart_ry, heart_rx, edge=0.15), 0.68)
    img = img + 0.03 * smooth_noise(rng, (size, size), 4.0)
    return finish(rng, img, blur=1.2, noise=(0.01, 0.03))


def brain_mri(rng: np.random.Generator, tumour: bool, size: int = 128) -> Array:
    """Axial contrast-enhanced T1 slice; a glioma shows as a bright enhancing blob that no
    normal tissue reaches (scalp fat is the brightest normal tissue, about 0.6)."""
    y, x = posed_grid(rng, size, size, rotate_deg=12.0, scale=(0.85, 1.0))
    img = np.zeros((size, size), np.float32)
    img = paint(img, ellipse(y, x, 0.0, 0.0, 0.9, 0.74, edge=0.04), rng.uniform(0.55, 0.62))
    img = paint(img, ellipse(y, x, 0.0, 0.0, 0.84, 0.68, edge=0.04), 0.08)  # skull
    brain = ellipse(y, x, 0.0, 0.0, 0.8, 0.64, edge=0.05)
    texture = 0.05 * smooth_noise(rng, (size, size), 2.0)
    img = paint(img, brain, rng.uniform(0.36, 0.44) + texture)
    for side in (-1, 1):  # lateral ventricles
        img = paint(img, ellipse(y, x, -0.05, side * 0.1, 0.22, 0.07, edge=0.3), 0.12)
    if tumour:
        r = rng.uniform(0.12, 0.22)
        a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.45)
        cy, cx = d * np.sin(a), d * np.cos(a) * 0.8
        img = paint(img, ellipse(y, x, cy, cx, r * 1.5, r * 1.4, edge=0.4), 0.28)  # oedema
        img = paint(img, ellipse(y, x, cy, cx, r, r * rng.uniform(0.8, 1.2), edge=0.2), 0.97)
        if rng.uniform() < 0.5:  # necrotic core, ring enhancement
            img = paint(img, ellipse(y, x, cy, cx, r * 0.45, r * 0.45, edge=0.3), 0.5)
    return finish(rng, img, blur=0.7, noise=(0.01, 0.025))


def fundus(rng: np.random.Generator, retinopathy: bool, size: int = 160) -> Array:
    """Colour fundus photograph; diabetic retinopathy adds dark-red microaneurysms and
    haemorrhages and bright yellow exudates."""
    y, x = posed_grid(rng, size, size, rotate_deg=10.0, scale=(0.95, 1.0), shift=0.03)
    img = np.zeros((size, size, 3), np.float32)
    retina = ellipse(y, x, 0.0, 0.0, 0.94, 0.94, edge=0.03)
    vignette = np.clip(1.15 - 0.45 * (y**2 + x**2), 0, 1)[..., None]
    base = np.array([rng.uniform(0.72, 0.88), rng.uniform(0.28, 0.38), rng.uniform(0.1, 0.18)])
    tex = 0.04 * smooth_noise(rng, (size, size), 3.0)[..., None]
    img = paint(img, retina, base * vignette + tex)
    side = rng.choice([-1.0, 1.0])
    img = paint(img, ellipse(y, x, 0.0, -side * 0.15, 0.16, 0.16, edge=0.6), [0.45, 0.15, 0.06])
    img = paint(img, ellipse(y, x, 0.0, side * 0.45, 0.13, 0.12, edge=0.3), [0.98, 0.86, 0.55])
    arc = 0.5 * (x - side * 0.45) ** 2 * side
    vessels = np.zeros_like(y)
    for k in range(rng.integers(4, 7)):  # vessels: arcs leaving the optic disc
        bend = rng.uniform(0.6, 1.4) * (1 if k % 2 else -1)
        dist = y - bend * arc - rng.uniform(-0.08, 0.08)
        np.maximum(vessels, band(dist, rng.uniform(0.012, 0.025), edge=0.01), out=vessels)
    reach = np.clip(1.0 - np.abs(x - side * 0.45) / 1.1, 0, 1)
    img = paint(img, vessels * reach * retina, [0.5, 0.08, 0.06])
    if retinopathy:
        _spots(rng, img, y, x, int(rng.integers(8, 18)), 0.7, (0.015, 0.03), [0.35, 0.03, 0.03])
        _spots(rng, img, y, x, int(rng.integers(5, 12)), 0.6, (0.02, 0.04), [0.98, 0.92, 0.35])
    return finish(rng, img, blur=0.6, noise=(0.005, 0.02))


def skin_lesion(rng: np.random.Generator, melanoma: bool, h: int = 120, w: int = 160) -> Array:
    """Dermoscopy; a benign nevus is round and evenly light brown, a melanoma has an
    irregular border and several colours including black and blue-grey."""
    y, x = posed_grid(rng, h, w, rotate_deg=180.0, scale=(0.85, 1.1), shift=0.15)
    tone = np.array([rng.uniform(0.82, 0.95), rng.uniform(0.62, 0.76), rng.uniform(0.52, 0.66)])
    img = (np.ones((h, w, 3)) * tone).astype(np.float32)
    img = img + 0.025 * smooth_noise(rng, (h, w), 6.0)[..., None]
    r0 = rng.uniform(0.32, 0.48)
    theta, rad = np.arctan2(y, x * 0.85), np.sqrt(y**2 + (x * 0.85) ** 2)
    if melanoma:
        bumps = sum(
            rng.uniform(0.06, 0.14) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
            for k in range(2, 8)
        )
        border = r0 * (1.0 + bumps)
    else:
        border = r0 * (1.0 + 0.03 * np.sin(2 * theta + rng.uniform(0, 6)))
    lesion = np.clip((border - rad) / 0.03 + 0.5, 0, 1).astype(np.float32)
    if melanoma:
        img = paint(img, lesion, [0.36, 0.22, 0.15])
        patches = smooth_noise(rng, (h, w), 5.0)
        img = paint(img, lesion * (patches > 0.6), [0.08, 0.06, 0.07])
        img = paint(img, lesion * (patches < -0.7), [0.38, 0.44, 0.55])
        img = paint(img, lesion * (smooth_noise(rng, (h, w), 4.0) > 1.0), [0.7, 0.25, 0.25])
    else:
        shade = np.array([rng.uniform(0.5, 0.62), rng.uniform(0.34, 0.42), 0.25])
        img = paint(img, lesion, shade + 0.02 * smooth_noise(rng, (h, w), 3.0)[..., None])
    for _ in range(rng.integers(0, 4)):  # hairs
        a, c = rng.uniform(0, np.pi), rng.uniform(-0.8, 0.8)
        img = paint(img, band(np.sin(a) * x - np.cos(a) * y - c, 0.006, 0.006), [0.2, 0.15, 0.12])
    return finish(rng, img, blur=0.8, noise=(0.005, 0.015))


def bone_xray(rng: np.random.Generator, fracture: bool, size: int = 224) -> Array:
    """Radiograph of a long bone; a fracture is a dark gap across the shaft with a small
    displacement of one fragment."""
    y, x = posed_grid(rng, size, size, rotate_deg=30.0, scale=(0.85, 1.05), shift=0.1)
    img = np.full((size, size), 0.05, np.float32)
    img = paint(img, band(x, rng.uniform(0.45, 0.6), edge=0.08), 0.3)  # soft tissue
    half = rng.uniform(0.09, 0.13)
    gap_at = rng.uniform(-0.4, 0.4)
    slope = rng.uniform(-0.5, 0.5)
    cut = y - gap_at - slope * x  # signed distance-like to the fracture line
    shift = rng.uniform(0.02, 0.05) * rng.choice([-1, 1]) if fracture else 0.0
    xs = x - shift * (cut > 0)
    shaft = band(xs, half, edge=0.02) * band(y, 0.78, edge=0.05)
    cortex = shaft * (np.abs(xs) > half * 0.55)
    img = paint(img, shaft, 0.62)
    img = paint(img, cortex, 0.88)
    for end in (-0.8, 0.8):
        img = paint(img, ellipse(y, xs, end, 0.0, 0.12, half * 1.7, edge=0.2), 0.75)
    if fracture:
        gap = band(cut, rng.uniform(0.012, 0.022), edge=0.01) * band(xs, half * 1.2, 0.02)
        img = paint(img, gap, 0.22)
    img = img + 0.02 * smooth_noise(rng, (size, size), 6.0)
    return finish(rng, img, blur=0.8, noise=(0.005, 0.02))


def blood_smear(rng: np.random.Generator, malaria: bool, h: int = 96, w: int = 128) -> Array:
    """Thin blood film; malaria shows purple ring forms (Plasmodium trophozoites) inside
    red cells, stained the colour nothing else in the film has."""
    y, x = posed_grid(rng, h, w, rotate_deg=0.0, scale=(0.95, 1.05), shift=0.0)
    img = (np.ones((h, w, 3)) * np.array([0.94, 0.86, 0.88])).astype(np.float32)
    cells: list[tuple[float, float, float]] = []
    for _ in range(200):
        if len(cells) >= rng.integers(12, 20):
            break
        r = rng.uniform(0.12, 0.17)
        cy, cx = rng.uniform(-0.85, 0.85), rng.uniform(-1.2, 1.2)
        if all((cy - a) ** 2 + (cx - b) ** 2 > (r + c) ** 2 for a, b, c in cells):
            cells.append((cy, cx, r))
    cell_colour = np.array([rng.uniform(0.8, 0.9), rng.uniform(0.45, 0.55), 0.55])
    for cy, cx, r in cells:
        disc(img, y, x, (cy, cx), (r, r * rng.uniform(0.9, 1.1)), cell_colour, edge=0.15)
        disc(img, y, x, (cy, cx), (r * 0.4, r * 0.4), cell_colour + 0.08, edge=0.8)
    if malaria:
        infected = rng.choice(
            len(cells), size=min(len(cells), int(rng.integers(2, 6))), replace=False
        )
        for i in infected:
            cy, cx, r = cells[i]
            py, px = cy + rng.uniform(-0.3, 0.3) * r, cx + rng.uniform(-0.3, 0.3) * r
            rr = rng.uniform(0.035, 0.05)
            disc(img, y, x, (py, px), (rr, rr), [0.42, 0.18, 0.58], edge=0.25)  # ring ...
            disc(img, y, x, (py, px), (rr * 0.55, rr * 0.55), cell_colour + 0.04)  # ... pale centre
            disc(img, y, x, (py - rr, px), (rr * 0.4, rr * 0.4), [0.3, 0.08, 0.42])  # chromatin
    return finish(rng, img, blur=0.5, noise=(0.005, 0.015))


def cattle_skin(rng: np.random.Generator, lumpy: bool, size: int = 128) -> Array:
    """Photograph of a cow's flank; lumpy skin disease raises firm round nodules, lit from
    above, often with a hairless grey centre."""
    y, x = posed_grid(rng, size, size, rotate_deg=20.0, scale=(0.9, 1.1), shift=0.1)
    dark = np.array([rng.uniform(0.08, 0.3), rng.uniform(0.06, 0.2), rng.uniform(0.04, 0.12)])
    light = np.array([0.9, 0.87, 0.82]) * rng.uniform(0.85, 1.0)
    patches = (smooth_noise(rng, (size, size), 12.0) > rng.uniform(-0.5, 0.5)).astype(np.float32)
    coat = (np.ones((size, size, 3)) * light).astype(np.float32)
    img = paint(coat, gaussian_filter(patches, 1.5), dark)
    hair = gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), (0.5, 3.0))
    img = img * (1.0 + 0.12 * hair[..., None])
    if lumpy:
        for _ in range(rng.integers(5, 12)):
            r = rng.uniform(0.08, 0.15)
            cy, cx = rng.uniform(-0.85, 0.85), rng.uniform(-0.85, 0.85)
            shade = np.ones(img.shape[:2], np.float32)
            disc(shade, y, x, (cy, cx), (r, r), 1.0 + 0.45 * np.clip((cy - y) / r, -1, 1), edge=0.5)
            img = img * shade[..., None]  # a bump lit from above
            disc(img, y, x, (cy, cx), (r * 0.45, r * 0.45), [0.62, 0.55, 0.52], edge=0.5)
    return finish(rng, img, blur=0.6, noise=(0.01, 0.03))


def kidney_ct(rng: np.random.Generator, stone: bool, size: int = 128) -> Array:
    """Axial abdominal CT in Hounsfield units mapped to [0, 1] over [-1024, 1976] HU; a
    kidney stone is a small spot over 600 HU inside a kidney, where soft tissue is ~40 HU."""
    y, x = posed_grid(rng, size, size, rotate_deg=6.0, scale=(0.9, 1.0), shift=0.04)
    hu = np.full((size, size), -1000.0, np.float32)
    hu = paint(hu, ellipse(y, x, 0.0, 0.0, 0.7, 0.95, edge=0.03), -100.0)  # fat
    hu = paint(hu, ellipse(y, x, 0.0, 0.0, 0.63, 0.88, edge=0.05), 45.0)  # muscle and organs
    hu = hu + 12.0 * smooth_noise(rng, (size, size), 2.0)
    hu = paint(hu, ellipse(y, x, -0.1, -0.45, 0.35, 0.4, edge=0.1), 60.0)  # liver
    hu = paint(hu, ellipse(y, x, 0.42, 0.0, 0.13, 0.13, edge=0.1), 700.0)  # vertebra
    kidneys = []
    for side in (-1, 1):
        cy, cx = 0.3, side * rng.uniform(0.36, 0.44)
        kidneys.append((cy, cx))
        hu = paint(hu, ellipse(y, x, cy, cx, 0.21, 0.14, edge=0.15), 90.0)  # enhancing cortex
        hu = paint(hu, ellipse(y, x, cy, cx - side * 0.04, 0.06, 0.04, edge=0.5), 10.0)
    if stone:
        for _ in range(rng.integers(1, 3)):
            cy, cx = kidneys[rng.integers(0, 2)]
            r = rng.uniform(0.035, 0.05)
            py, px = cy + rng.uniform(-0.08, 0.08), cx + rng.uniform(-0.04, 0.04)
            disc(hu, y, x, (py, px), (r, r), rng.uniform(900.0, 1400.0))
    hu = hu + rng.uniform(5.0, 15.0) * rng.standard_normal(hu.shape, dtype=np.float32)
    return np.clip((hu + 1024.0) / 3000.0, 0.0, 1.0).astype(np.float32)


def dog_thorax(rng: np.random.Generator, cardiomegaly: bool, h: int = 112, w: int = 144) -> Array:
    """Lateral canine thoracic radiograph; an enlarged heart covers more of the lung field
    (a higher vertebral heart score)."""
    y, x = posed_grid(rng, h, w, rotate_deg=5.0)
    img = np.full((h, w), 0.05, np.float32)
    img = paint(img, ellipse(y, x, 0.05, 0.0, 0.78, 1.3, edge=0.06), 0.5)  # body
    img = paint(img, ellipse(y, x, -0.05, 0.05, 0.52, 0.95, edge=0.12), 0.17)  # lungs
    img = paint(img, band(y + 0.62, 0.06, edge=0.02) * band(x, 1.25, 0.05), 0.78)  # spine
    img = paint(img, band(y - 0.68, 0.035, edge=0.02) * band(x, 0.9, 0.05), 0.65)  # sternum
    ry = rng.uniform(0.43, 0.5) if cardiomegaly else rng.uniform(0.28, 0.33)
    rx = rng.uniform(0.36, 0.42) if cardiomegaly else rng.uniform(0.22, 0.27)
    img = paint(img, ellipse(y, x, 0.28, -0.2, ry, rx, edge=0.15), 0.66)
    img = img + 0.025 * smooth_noise(rng, (h, w), 3.0)
    return finish(rng, img, blur=1.0, noise=(0.01, 0.03))
