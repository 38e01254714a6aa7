"""Read a phantom's finding from its pixels, as a reader of the image would.

Why: the domain classifier says whether a generated "chest X-ray, cardiomegaly" *looks like*
that class to a network, which a generator can satisfy with texture while drawing a normal
heart. These functions measure the finding itself (a heart-to-thorax ratio, an enhancing blob,
a gap across a bone ...) with classical image processing and no learned weights, so the
benchmark can ask: does the generated image show the disease it was prompted with?

Each reader takes one 64x64-ish RGB uint8 image as MedImgs stores it (resized, centre-cropped,
JPEG) and returns a :class:`Finding`: the measurement and the decision. The thresholds sit in
the gap between healthy and diseased phantoms as ``ops.data.sources.phantom_draw`` draws them
(ranges quoted per reader); they are geometric or relative to the image's own tissue levels,
so exposure (gain, gamma) and the storage recipe do not move them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import ndimage

Array = np.ndarray


@dataclass(frozen=True)
class Finding:
    """``value``: the measurement (its unit per reader); ``diseased``: the reader's decision."""

    value: float
    diseased: bool


# helpers ----------------------------------------------------------------------------------------
def _rgb(image: Array) -> Array:
    """float (H, W, 3) in [0, 1] from uint8 (H, W, 3) or grey (H, W)."""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr[..., :3]


def _grey(image: Array) -> Array:
    return _rgb(image).mean(axis=2)


def _components(mask: Array) -> tuple[Array, Array]:
    """Labels (8-connected) and the pixel count of each label (index 0: background)."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    return labels, np.bincount(labels.ravel())


def _otsu(values: Array) -> float:
    """Otsu's threshold of values in [0, 1]: splits dark from bright without a fixed level, so
    exposure changes (gain, gamma) move it with the tissues."""
    hist, edges = np.histogram(values, bins=128, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    between = (m0[-1] * w0 - m0) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(centres[int(np.argmax(between))])


# cardiomegaly: chest X-ray (PA) and dog thorax ---------------------------------------------------
def _lungs(grey: Array, body_leaves_sides: bool) -> Array:
    """Lung fields: the large dark regions (below the soft tissue's Otsu cut) that the air
    around the body does not reach. Air is found as the pixels darker than lung (a second
    Otsu cut, among the dark pixels) connected to the image's edge; it cannot flood a lung,
    whose level is 3-4x the air's, even where the body's rim beside a lung apex thins to a dim
    pixel, which is why this beats filling the body's holes (they leak there).
    ``body_leaves_sides``: a lateral view cropped square; the air is entered from the top and
    bottom edges only, where the lungs never reach."""
    grey = ndimage.gaussian_filter(grey, 0.7)
    body = _otsu(grey)
    dark = grey < body
    air_level = _otsu(np.clip(grey[dark] / body, 0, 1)) * body
    airy, _ = _components(grey < air_level)
    edges = (
        [airy[0], airy[-1]] if body_leaves_sides else [airy[0], airy[-1], airy[:, 0], airy[:, -1]]
    )
    air = np.isin(airy, [i for i in np.unique(np.concatenate(edges)) if i])
    air = ndimage.binary_dilation(air, np.ones((3, 3), bool), iterations=2) & dark
    lungs = ndimage.binary_opening(dark & ~air, np.ones((3, 3), bool))
    labels, sizes = _components(lungs)
    sizes[0] = 0  # lungs are the large regions: slivers pinched off at corners are not
    return np.isin(labels, np.flatnonzero(sizes >= max(12, 0.2 * sizes.max())))


def heart_thorax_ratio(image: Array, body_leaves_sides: bool = False) -> float:
    """Widest run of non-lung between lung on one row (the heart's transverse diameter, or
    the mediastinum where the heart is narrower) over the lungs' full width: the
    cardiothoracic ratio a radiologist measures."""
    lungs = _lungs(_grey(image), body_leaves_sides)
    cols = np.flatnonzero(lungs.any(axis=0))
    if cols.size < 2:
        return float("nan")
    heart = 0
    for row in lungs:
        idx = np.flatnonzero(row)
        if idx.size >= 2:
            heart = max(heart, int((np.diff(idx) - 1).max()))
    return heart / float(cols[-1] - cols[0] + 1)


def chest_cardiomegaly(image: Array) -> Finding:
    """Drawn hearts: 0.44-0.56 wide (normal) against 0.8-0.96 (cardiomegaly) in a thorax 1.3
    wide. Measured on stored 64 px images the ratio is 0.39-0.54 (normal) against 0.51-0.74,
    most above 0.6 (the mediastinum and the blur widen the run); a radiologist's cut is 0.5."""
    ratio = heart_thorax_ratio(image)
    return Finding(ratio, bool(ratio > 0.57))


def dog_cardiomegaly(image: Array) -> Finding:
    """Lateral view, lungs cropped by the square at both sides (width ~2): drawn hearts are
    0.44-0.54 wide (normal) against 0.72-0.84 (enlarged), a ratio ~0.25 against ~0.4."""
    ratio = heart_thorax_ratio(image, body_leaves_sides=True)
    return Finding(ratio, bool(ratio > 0.35))


# brain MRI: an enhancing tumour -------------------------------------------------------------------
def tumour_area(image: Array) -> float:
    """Pixels of the largest region brighter than any normal tissue can be: enhancing tumour
    is drawn at 0.97 against scalp fat (the brightest normal tissue) at <= 0.62 before exposure,
    so the cut sits at 0.8 of the image's own ceiling (its 99.9th percentile is tumour or fat)."""
    grey = _grey(image)
    bright = grey > max(0.78, 0.8 * float(np.percentile(grey, 99.9)))
    _, sizes = _components(bright)
    return float(sizes[1:].max()) if len(sizes) > 1 else 0.0


def brain_tumour(image: Array) -> Finding:
    area = tumour_area(image)
    return Finding(area, bool(area >= 4))


# fundus: diabetic retinopathy ---------------------------------------------------------------------
def _spots(channel: Array, size: int, contrast: float) -> Array:
    """Small bright spots: the white top-hat (the channel minus its grey opening by ``size``)
    above ``contrast``; anything wider than ``size`` (the optic disc, the background) drops out."""
    return channel - ndimage.grey_opening(channel, size=(size, size)) > contrast


DISC_EXCLUSION_PX = 10


def exudate_count(image: Array) -> float:
    """Hard exudates: small spots much brighter and yellower than the retina around them
    (drawn 0.02-0.04 in radius, about a pixel at 64 px, green 0.92 on a retina of 0.28-0.38),
    counted outside the optic disc. The disc is as yellow, and vessels crossing it cut it into
    spot-sized pieces; it is the bluest place of the fundus (drawn blue 0.55 against 0.35 for
    exudates and 0.1-0.18 for the retina), so ``DISC_EXCLUSION_PX`` around the peak of the
    blurred blue channel (the disc is ~4 px in radius, vessel-cut pieces reach ~8) is left out."""
    rgb = _rgb(image)
    yellow = rgb[..., 1] - 0.5 * rgb[..., 2]
    blue = ndimage.gaussian_filter(rgb[..., 2], 1.5)
    disc = np.unravel_index(int(np.argmax(blue)), blue.shape)
    rows, cols = np.indices(yellow.shape)
    near_disc = np.hypot(rows - disc[0], cols - disc[1]) <= DISC_EXCLUSION_PX
    _, sizes = _components(_spots(yellow, 5, 0.15) & ~near_disc)
    return float((sizes[1:] >= 1).sum())


def fundus_retinopathy(image: Array) -> Finding:
    count = exudate_count(image)
    return Finding(count, bool(count >= 2))


# skin: melanoma against a benign nevus -------------------------------------------------------------
def atypical_colour_fraction(image: Array) -> float:
    """Share of pixels in colours a nevus never has: black (every channel dark) or blue-grey
    (blue above red). Drawn nevi and skin are brown or pink, red > green > blue, while a
    melanoma carries black and blue-grey patches (the C of the ABCD rule)."""
    rgb = _rgb(image)[2:-2, 2:-2]  # the crop's edge rows can hold a dark resampling seam
    black = rgb.max(axis=2) < 0.2
    blue_grey = rgb[..., 2] > rgb[..., 0] + 0.03
    return float((black | blue_grey).mean())


def skin_melanoma(image: Array) -> Finding:
    share = atypical_colour_fraction(image)
    return Finding(share, bool(share > 0.002))


# bone X-ray: fracture ---------------------------------------------------------------------------------
def _axis(mask: Array) -> tuple[Array, Array, Array]:
    """Centroid, unit long axis and unit normal of a mask's pixels (principal components)."""
    pts = np.argwhere(mask).astype(np.float64)
    centre = pts.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov((pts - centre).T))
    along = vecs[:, -1]
    return centre, along, np.array([-along[1], along[0]])


SLOPES = np.linspace(-0.7, 0.7, 15)


def fracture_gap(image: Array) -> float:
    """Deepest dark line across the bone's shaft, relative to the shaft: the mean along a line
    crossing the shaft (tilted by up to +-35 deg from square to the axis, the gap's range),
    below the mean of the lines 3 px before and after. A healthy shaft is uniform along its
    axis; a fracture gap (drawn 0.024-0.044 wide, about a pixel at 64 px, at 0.22 in a shaft
    of 0.62-0.88, with the bone tilted by up to 30 deg) is darker across it."""
    grey = _grey(image)
    labels, sizes = _components(grey > 0.55 * float(np.percentile(grey, 99)))
    sizes[0] = 0  # a gap may split the bone in two: both fragments are the bone
    bone = np.isin(labels, np.flatnonzero(sizes >= 0.2 * sizes.max()))
    centre, along, normal = _axis(bone)
    pts = np.argwhere(bone) - centre
    u, v = pts @ along, pts @ normal
    length = u.max() - u.min()
    mid = np.abs(u - (u.max() + u.min()) / 2) < 0.3 * length
    half = float(np.percentile(np.abs(v[mid]), 90)) * 0.8
    us = np.arange(u.min() + 0.2 * length, u.max() - 0.2 * length, 0.5)
    vs = np.linspace(-half, half, max(3, int(2 * half / 0.5)))
    step = 6  # 3 px in samples of 0.5 px
    best = 0.0
    for slope in SLOPES:
        uu = us[:, None] + slope * vs[None, :]
        coords = centre[:, None, None] + along[:, None, None] * uu + normal[:, None, None] * vs
        line = ndimage.map_coordinates(grey, coords, order=1, mode="nearest").mean(axis=1)
        if len(line) <= 2 * step:
            continue
        dip = 0.5 * (line[: -2 * step] + line[2 * step :]) - line[step:-step]
        best = max(best, float(dip.max() / np.median(line)))
    return best


def bone_fracture(image: Array) -> Finding:
    gap = fracture_gap(image)
    return Finding(gap, bool(gap > 0.15))


# blood smear: malaria --------------------------------------------------------------------------------
def parasite_contrast(image: Array) -> float:
    """Ring forms: the darkest small spot inside a red cell, below its surroundings (the
    green channel's black top-hat by 3 px, within cells eroded by 2 px so that their rims
    and the gaps between them drop out). Drawn rings are 0.035-0.05 in radius (~1.5 px at
    64 px) with a pale centre, green 0.18 in cells of 0.45-0.55. Their purple does not
    survive 64 px and JPEG's chroma subsampling (blue never exceeds red in stored images)."""
    rgb = _rgb(image)
    green, lum = rgb[..., 1], rgb.mean(axis=2)
    cells = ndimage.binary_erosion(lum < _otsu(lum), np.ones((3, 3), bool), iterations=2)
    dark = ndimage.grey_closing(green, size=(3, 3)) - green
    return float((dark * cells).max())


def blood_malaria(image: Array) -> Finding:
    contrast = parasite_contrast(image)
    return Finding(contrast, bool(contrast > 0.085))


# cattle skin: lumpy skin disease ------------------------------------------------------------------------
def _lit_bump(log: Array, row: int, col: int) -> float:
    """How well a spot at (row, col) sits in a bump lit from above: its upper half brighter
    than the coat above it and its lower half darker than the coat below (log-luminance, so
    dark and light coats respond alike); the weaker of the two, best over radii 3-5 px. A
    coat patch edge brightens one side only."""
    best = -np.inf
    c0, c1 = max(0, col - 2), col + 3
    for r in (3, 4, 5):
        if row - r - 3 < 0 or row + r + 4 > log.shape[0]:
            continue
        upper, lower = (
            log[row - r : row - 1, c0:c1].mean(),
            log[row + 2 : row + r + 1, c0:c1].mean(),
        )
        above, below = (
            log[row - r - 3 : row - r, c0:c1].mean(),
            log[row + r + 1 : row + r + 4, c0:c1].mean(),
        )
        best = max(best, min(upper - above, below - lower))
    return float(best)


def nodule_count(image: Array) -> float:
    """Nodules: small spots (the grey centre, brighter than a dark coat or darker than a light
    one: white or black top-hat by 5 px) sitting in a bump lit from above (drawn x1.45 above
    and x0.55 below, radii 2.5-5 px at 64 px)."""
    lum = _grey(image)
    spots = (lum - ndimage.grey_opening(lum, size=(5, 5)) > 0.08) | (
        ndimage.grey_closing(lum, size=(5, 5)) - lum > 0.08
    )
    labels, count = ndimage.label(spots, np.ones((3, 3), bool))
    log = np.log(lum + 0.03)
    centres = ndimage.center_of_mass(spots, labels, range(1, count + 1))
    return float(sum(_lit_bump(log, round(r), round(c)) > 0.1 for r, c in centres))


def cattle_lumpy(image: Array) -> Finding:
    count = nodule_count(image)
    return Finding(count, bool(count >= 1))


# kidney CT: stone ---------------------------------------------------------------------------------------
def stone_contrast(image: Array) -> float:
    """Brightest small spot beside the midline (a calculus in a kidney) above its
    surroundings, as a share of the image's range. Drawn stones are 900-1400 HU in radius
    0.035-0.05 (~1.3 px) inside kidneys at 0.36-0.44 from the midline; the vertebra (700 HU)
    sits on the midline and is wider than the top-hat."""
    grey = _grey(image)
    spots = grey - ndimage.grey_opening(grey, size=(4, 4))
    body = grey > _otsu(grey) * 0.5
    cols = np.flatnonzero(body.any(axis=0))
    mid, width = (cols[0] + cols[-1]) / 2, cols[-1] - cols[0] + 1
    lateral = np.abs(np.arange(grey.shape[1]) - mid) > 0.15 * width
    spots[:, ~lateral] = 0
    return float(spots.max() / max(1e-6, float(np.percentile(grey, 99.5))))


def kidney_stone(image: Array) -> Finding:
    contrast = stone_contrast(image)
    return Finding(contrast, bool(contrast > 0.32))


# ---------------------------------------------------------------------------------------------------
FamilyReader = Callable[[Array], Finding]
READERS: dict[str, FamilyReader] = {
    "chest_xray": chest_cardiomegaly,
    "brain_mri": brain_tumour,
    "fundus": fundus_retinopathy,
    "skin": skin_melanoma,
    "bone_xray": bone_fracture,
    "blood_smear": blood_malaria,
    "cattle_skin": cattle_lumpy,
    "kidney_ct": kidney_stone,
    "dog_thorax": dog_cardiomegaly,
}


def read_finding(family: str, image: Array) -> Finding:
    """The finding of a phantom family (``ops.data.sources.phantoms.FAMILIES`` names)."""
    return READERS[family](image)


@cache
def phantom_classes(registry: str | None = None) -> dict[str, tuple[str, bool]]:
    """MedImgs class name -> (phantom family, diseased), from the ``phantoms`` registry entry."""
    from ops.data.sources.phantoms import CLASS_KEYS
    from ops.data.sources.registry import load_registry

    spec = next(s for s in load_registry(registry).values() if s.kind == "phantoms")
    return {
        spec.classes[key].class_name: (fam.name, diseased)
        for key, (fam, diseased) in CLASS_KEYS.items()
    }


def finding_agreement(
    images: Sequence[Array] | Array,
    class_names: Sequence[str],
    classes: Mapping[str, tuple[str, bool]] | None = None,
) -> dict[str, float]:
    """Per class: the share of its images whose read finding matches the class's label
    (diseased or healthy). Classes without a reader (not phantoms) are left out."""
    classes = phantom_classes() if classes is None else classes
    hits: dict[str, list[bool]] = {}
    for image, name in zip(images, class_names, strict=True):
        if name not in classes or classes[name][0] not in READERS:
            continue
        family, diseased = classes[name]
        hits.setdefault(name, []).append(read_finding(family, image).diseased == diseased)
    return {name: float(np.mean(h)) for name, h in sorted(hits.items())}
