"""The embedded ``phantoms`` source: a seeded generator of synthetic medical-like images.

It lets the whole pipeline run offline with checkable results: every class is decidable from
its pixels (see ``phantom_draw``), and the files arrive the way real downloads do (mixed formats,
two families zipped, one labelled by a CSV) with defects mixed in. ``generate_phantoms`` returns,
besides counts, the outcome cleaning must reach for each planted defect, so tests can check the
cleaning against ground truth.

Class keys (folder names and CSV labels) and their labels live in the registry
(``configs/sources.yaml``, source ``phantoms``); this module maps each key to a drawer. The dog
thorax family is marked ``holdout: true`` there: base training never sees it.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ops.data import reasons
from ops.data.pool import process_pool
from ops.data.sources import phantom_draw as draw
from ops.data.sources import phantom_encode as enc
from ops.data.sources.registry import RegistryError, SourceSpec

Array = np.ndarray
Files = list[tuple[str, bytes]]  # (path relative to the source; "a.zip!member" for members)
KEPT = "kept"
DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Family:
    """Two classes drawn by one drawer (healthy, diseased) and stored by one recipe."""

    name: str
    draw: Callable[[np.random.Generator, bool], Array]
    healthy: str
    diseased: str
    store: Callable[[str, int, Array, str], Files]  # (class key, index, pixels, uid seed)


# storage recipes: how each family's files arrive ------------------------------------------------
def _store_chest(key: str, i: int, img: Array, uid: str) -> Files:
    sub = "val" if i % 5 == 4 else "train"
    data = enc.png16(img) if i % 3 == 0 else enc.png8(img)
    return [(f"chest_xray/{sub}/{key}/IM-{i:04d}.png", data)]


def _store_brain(key: str, i: int, img: Array, uid: str) -> Files:
    stored = enc.to_uint16(img, 4095)
    mono1 = i % 4 == 1
    if mono1:
        stored = 4095 - stored
    data = enc.dicom(stored, "MR", uid, monochrome1=mono1, window=(2048.0, 4096.0))
    return [(f"brain_mri.zip!Brain-MRI/{key}/Tr-{i:04d}.dcm", data)]


def _store_fundus(key: str, i: int, img: Array, uid: str) -> Files:
    stem = f"fundus/{key}/{i:04d}_{'left' if i % 2 else 'right'}"
    if i % 5 == 3:
        return [(f"{stem}.tif", enc.tiff8(img))]
    return [(f"{stem}.jpg", enc.jpeg_cmyk(img) if i % 4 == 2 else enc.jpeg(img))]


def _store_skin(key: str, i: int, img: Array, uid: str) -> Files:
    stem = f"skin_lesions/{key}/ISIC_{zlib.crc32(key.encode()) % 97:02d}{i:05d}"
    if i % 3 == 1:
        return [(f"{stem}.png", enc.png_alpha(img))]
    return [(f"{stem}.jpg", enc.jpeg(img))]


def _store_bone(key: str, i: int, img: Array, uid: str) -> Files:
    stem = f"bone_xray/{key}/image{i}"
    if i % 3 == 0:
        return [(f"{stem}.png", enc.png16(img))]
    if i % 3 == 1:
        return [(f"{stem}.tiff", enc.tiff16(img))]
    return [(f"{stem}.jpg", enc.jpeg(img))]


def _store_blood(key: str, i: int, img: Array, uid: str) -> Files:
    # Files of both classes share one folder; labels.csv (written at the end) tells them apart.
    stem = f"blood_smear/images/C{1 if key == 'parasitized' else 2}P{i:04d}_cell"
    if i % 2:
        return [(f"{stem}.bmp", enc.bmp(img))]
    return [(f"{stem}.png", enc.png_palette(img))]


def _store_cattle(key: str, i: int, img: Array, uid: str) -> Files:
    # Every sixth file is a PNG saved under a .jpg name: decodable, so it must be kept.
    data = enc.png8(img) if i % 6 == 5 else enc.jpeg(img)
    return [(f"cattle/{key}/{i:04d}.jpg", data)]


def _store_kidney(key: str, i: int, img: Array, uid: str) -> Files:
    stored = enc.to_uint16(img, 3000)  # img maps [-1024, 1976] HU to [0, 1]
    window = None if i % 3 == 2 else (40.0, 400.0)
    data = enc.dicom(stored, "CT", uid, window=window, rescale=(1.0, -1024.0))
    return [(f"kidney_ct.zip!CT-KIDNEY/{key}/Image ({i}).dcm", data)]


def _store_dog(key: str, i: int, img: Array, uid: str) -> Files:
    stem = f"dog_thorax/{key}/dog_{i:04d}"
    if i % 2:
        stored = enc.to_uint16(img, 4095)
        return [(f"{stem}.dcm", enc.dicom(stored, "CR", uid, window=(2048.0, 4096.0)))]
    return [(f"{stem}.jpg", enc.jpeg(img))]


FAMILIES: tuple[Family, ...] = (
    Family(
        "chest_xray", draw.chest_xray, "chest_xray_normal", "chest_xray_cardiomegaly", _store_chest
    ),
    Family("brain_mri", draw.brain_mri, "brain_mri_no_tumor", "brain_mri_glioma", _store_brain),
    Family("fundus", draw.fundus, "fundus_normal", "fundus_diabetic_retinopathy", _store_fundus),
    Family("skin", draw.skin_lesion, "skin_nevus", "skin_melanoma", _store_skin),
    Family("bone_xray", draw.bone_xray, "bone_xray_normal", "bone_xray_fracture", _store_bone),
    Family("blood_smear", draw.blood_smear, "uninfected", "parasitized", _store_blood),
    Family(
        "cattle_skin", draw.cattle_skin, "cattle_skin_healthy", "cattle_skin_lumpy", _store_cattle
    ),
    Family("kidney_ct", draw.kidney_ct, "kidney_ct_normal", "kidney_ct_stone", _store_kidney),
    Family(
        "dog_thorax", draw.dog_thorax, "dog_thorax_normal", "dog_thorax_cardiomegaly", _store_dog
    ),
)
CLASS_KEYS: dict[str, tuple[Family, bool]] = {
    key: (fam, diseased)
    for fam in FAMILIES
    for key, diseased in ((fam.healthy, False), (fam.diseased, True))
}
BLOOD_CSV_LABELS = {"parasitized": "Parasitized", "uninfected": "Uninfected"}


def draw_phantom(key: str, index: int, seed: int) -> Array:
    """The pixels of image ``index`` of class ``key``: a pure function of its arguments."""
    fam, diseased = CLASS_KEYS[key]
    fam_index = FAMILIES.index(fam)
    return fam.draw(np.random.default_rng([seed, fam_index, int(diseased), index]), diseased)


# writing ----------------------------------------------------------------------------------------
class RawTree:
    """Writes a source's files under ``root``; "a.zip!member" paths go into archives that stay
    open until ``close`` so large sources never sit in memory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.zips: dict[str, zipfile.ZipFile] = {}
        self.count = 0

    def put(self, path: str, data: bytes) -> None:
        if "!" in path:
            archive, member = path.split("!", 1)
            self._zip(archive).writestr(enc.zip_member(member), data)
        else:
            target = self.root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        self.count += 1

    def put_symlink_member(self, archive: str, member: str, target: str) -> None:
        self._zip(archive).writestr(enc.zip_member(member, symlink=True), target)
        self.count += 1

    def _zip(self, archive: str) -> zipfile.ZipFile:
        if archive not in self.zips:
            (self.root / archive).parent.mkdir(parents=True, exist_ok=True)
            self.zips[archive] = zipfile.ZipFile(self.root / archive, "w")
        return self.zips[archive]

    def close(self) -> None:
        for zf in self.zips.values():
            zf.close()
        self.zips.clear()


def check_spec(spec: SourceSpec) -> None:
    """Every class key of the registry entry needs a drawer, and every drawer a registry key."""
    known, wanted = set(CLASS_KEYS), set(spec.classes)
    if known != wanted:
        raise RegistryError(
            f"source {spec.name!r}: phantom classes in the registry {sorted(wanted - known)} have "
            f"no drawer, and drawers {sorted(known - wanted)} are missing from the registry"
        )


RENDER_BATCH = 64  # images per task: bounds the bytes a worker hands back at once


def render_batch(key: str, start: int, stop: int, seed: int) -> list[Files]:
    """Draw and encode images ``start..stop-1`` of class ``key`` (runs in worker processes)."""
    fam, _ = CLASS_KEYS[key]
    return [
        fam.store(key, i, draw_phantom(key, i, seed), f"{seed}/{key}/{i}")
        for i in range(start, stop)
    ]


def _render_task(task: tuple[str, int, int, int]) -> list[Files]:
    return render_batch(*task)


def generate_phantoms(
    dest: Path,
    spec: SourceSpec,
    per_class: int,
    seed: int,
    max_image_pixels: int,
    workers: int = 1,
) -> dict[str, Any]:
    """Write the phantom source under ``dest``; same arguments, same bytes (whatever
    ``workers``: images are drawn in parallel but written in one fixed order).

    Returns counts and ``planted``: for every defect file the outcome cleaning must reach (a
    reject reason, ``duplicate`` or ``kept``).
    """
    check_spec(spec)
    if per_class < 2:
        raise ValueError(
            f"phantoms_per_class must be at least 2 (defects copy images 0 and 1), got {per_class}"
        )
    tasks = [
        (key, start, min(start + RENDER_BATCH, per_class), seed)
        for fam in FAMILIES
        for key in (fam.healthy, fam.diseased)
        for start in range(0, per_class, RENDER_BATCH)
    ]
    tree = RawTree(dest)
    pixels: dict[tuple[str, int], Files] = {}
    csv_rows: list[tuple[str, str]] = []
    try:
        for (key, start, _, _), batch in zip(tasks, _render_all(tasks, workers), strict=True):
            for i, files in enumerate(batch, start):
                for path, data in files:
                    tree.put(path, data)
                if i < 2:
                    pixels[(key, i)] = files
                if key in BLOOD_CSV_LABELS:
                    csv_rows += [(Path(p).name, BLOOD_CSV_LABELS[key]) for p, _ in files]
        planted = _plant_defects(tree, pixels, per_class, seed, max_image_pixels)
        tree.put("blood_smear/labels.csv", _labels_csv(csv_rows))
    finally:
        tree.close()
    return {
        "classes": len(CLASS_KEYS),
        "per_class": per_class,
        "images": per_class * len(CLASS_KEYS),
        "files": tree.count,
        "planted": planted,
    }


def _render_all(tasks: list[tuple[str, int, int, int]], workers: int) -> Iterator[list[Files]]:
    """Rendered batches in task order; a process pool only when there is enough work."""
    if workers <= 1 or len(tasks) < 2 * workers or sum(t[2] - t[1] for t in tasks) < 500:
        yield from map(_render_task, tasks)
        return
    with process_pool(workers, __name__) as pool:
        yield from pool.map(_render_task, tasks)


def _labels_csv(rows: list[tuple[str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["filename", "label"])
    writer.writerows(rows)
    return buf.getvalue().encode()


def _plant_defects(
    tree: RawTree,
    pixels: dict[tuple[str, int], Files],
    per_class: int,
    seed: int,
    max_image_pixels: int,
) -> dict[str, str]:
    """Add the defects real downloads carry; return {source_file: expected outcome}."""
    rng = np.random.default_rng([seed, 999])
    planted: dict[str, str] = {}

    def put(path: str, data: bytes, outcome: str) -> None:
        tree.put(path, data)
        planted[path] = outcome

    put(
        "README.txt",
        b"Synthetic phantom images generated by ops.data.sources.phantoms.\n",
        reasons.NOT_AN_IMAGE,
    )
    put("bone_xray/bone_xray_normal/notes.csv", b"patient,comment\n1,ok\n", reasons.NOT_AN_IMAGE)
    put("fundus/fundus_normal/Thumbs.db", rng.bytes(512), reasons.NOT_AN_IMAGE)
    put("skin_lesions/skin_nevus/ISIC_empty.jpg", b"", reasons.EMPTY_FILE)
    put("dog_thorax/dog_thorax_normal/empty.dcm", b"", reasons.EMPTY_FILE)

    chest_png = pixels[("chest_xray_normal", 1)][0][1]  # an 8-bit PNG
    put(
        "chest_xray/train/chest_xray_normal/IM-trunc.png",
        chest_png[: len(chest_png) // 2],
        reasons.TRUNCATED,
    )
    fundus_jpg = pixels[("fundus_diabetic_retinopathy", 0)][0][1]
    put(
        "fundus/fundus_diabetic_retinopathy/trunc.jpg",
        fundus_jpg[: len(fundus_jpg) * 3 // 5],
        reasons.TRUNCATED,
    )
    kidney_dcm = pixels[("kidney_ct_normal", 0)][0][1]
    put(
        "kidney_ct.zip!CT-KIDNEY/kidney_ct_normal/Image (trunc).dcm",
        kidney_dcm[:-2000],
        reasons.TRUNCATED,
    )
    put(
        "kidney_ct.zip!__MACOSX/CT-KIDNEY/kidney_ct_normal/._Image (0).dcm",
        _apple_double(),
        reasons.NOT_AN_IMAGE,
    )

    # Exact copies, in the same folder and across split folders / archives. Names sort after
    # the originals, and cleaning keeps the first file of a set in (source, path) order.
    put("chest_xray/train/chest_xray_normal/IM-0001_copy.png", chest_png, DUPLICATE)
    put("chest_xray/val/chest_xray_normal/IM-0001.png", chest_png, DUPLICATE)
    brain_dcm = pixels[("brain_mri_glioma", 0)][0][1]
    put("brain_mri.zip!Brain-MRI/brain_mri_glioma/Tr-copy.dcm", brain_dcm, DUPLICATE)
    # re-encoded copies: the same pixels in another lossless format
    chest_pixels = np.asarray(Image.open(io.BytesIO(chest_png)))
    put(
        "chest_xray/val/chest_xray_normal/IM-0001.bmp",
        enc.pil_bytes(Image.fromarray(chest_pixels), "BMP"),
        DUPLICATE,
    )
    cattle_jpg = pixels[("cattle_skin_healthy", 0)][0][1]
    cattle_pixels = np.asarray(Image.open(io.BytesIO(cattle_jpg)).convert("RGB"))
    put(
        "cattle/cattle_skin_healthy/0000_export.tif",
        enc.pil_bytes(Image.fromarray(cattle_pixels), "TIFF"),
        DUPLICATE,
    )

    side = math.isqrt(max_image_pixels) + 64
    put(
        "bone_xray/bone_xray_fracture/scan_fullres.png",
        enc.pil_bytes(Image.new("1", (side, side)), "PNG"),
        reasons.DECOMPRESSION_BOMB,
    )

    escape = enc.png8(np.zeros((8, 8), np.float32))
    put("brain_mri.zip!../../escaped.png", escape, reasons.UNSAFE_PATH)
    put("brain_mri.zip!/tmp/absolute.png", escape, reasons.UNSAFE_PATH)
    tree.put_symlink_member("brain_mri.zip", "Brain-MRI/brain_mri_glioma/link.dcm", "/etc/passwd")
    planted["brain_mri.zip!Brain-MRI/brain_mri_glioma/link.dcm"] = reasons.SYMLINK

    unlisted = enc.png8(draw_phantom("uninfected", 10_000, seed))
    put("blood_smear/images/unlisted_cell.png", unlisted, reasons.UNLABELLED)
    planted["blood_smear/labels.csv"] = reasons.LABEL_FILE
    for key in ("cattle_skin_healthy", "cattle_skin_lumpy"):
        planted.update({f"cattle/{key}/{i:04d}.jpg": KEPT for i in range(5, per_class, 6)})
    return planted


def _apple_double() -> bytes:
    """The resource-fork stub macOS adds to zips (``__MACOSX/._name``)."""
    return b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)
