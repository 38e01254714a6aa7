"""Finding readers: on freshly drawn phantoms, stored as MedImgs stores them (64 px, JPEG 95),
each family's reader agrees with the label; the agreement table covers every phantom class."""

from __future__ import annotations

import numpy as np
import pytest

from ops.data.cleaning.phantom_stored import stored_phantom
from ops.data.sources.phantoms import FAMILIES
from ops.eval.findings import READERS, Finding, finding_agreement, phantom_classes, read_finding

PER_CLASS = 30
SEED = 5  # not the pipeline's seed 0: images the thresholds were not chosen on
# Families whose finding this reader does not yet read reliably at 64 px (measured agreement
# on 150 stored images per class in the commit that added them): strict, so a fix shows up.
NOT_YET = {
    "blood_smear": "ring forms are ~1.5 px at 64 px and JPEG's chroma subsampling removes "
    "their purple; about 30% of parasitized images show no dark spot in a cell",
    "cattle_skin": "coat patch islands and edges make as many lit-bump candidates as nodules",
}


@pytest.fixture(scope="module")
def stored() -> dict[str, list[np.ndarray]]:
    """``PER_CLASS`` stored images of every phantom class key."""
    return {
        key: [stored_phantom(key, i, SEED) for i in range(PER_CLASS)]
        for fam in FAMILIES
        for key in (fam.healthy, fam.diseased)
    }


def family_agreement(stored: dict[str, list[np.ndarray]], family: str) -> dict[str, float]:
    fam = next(f for f in FAMILIES if f.name == family)
    return {
        key: float(np.mean([read_finding(family, img).diseased == diseased for img in stored[key]]))
        for key, diseased in ((fam.healthy, False), (fam.diseased, True))
    }


@pytest.mark.parametrize(
    "family",
    [
        pytest.param(f.name, marks=pytest.mark.xfail(reason=NOT_YET[f.name], strict=True))
        if f.name in NOT_YET
        else f.name
        for f in FAMILIES
    ],
)
def test_reader_agrees_with_label(stored, family):
    agreement = family_agreement(stored, family)
    assert min(agreement.values()) >= 0.95, agreement


def test_every_family_has_a_reader_returning_a_finding(stored):
    assert set(READERS) == {f.name for f in FAMILIES}
    for fam in FAMILIES:
        finding = read_finding(fam.name, stored[fam.diseased][0])
        assert isinstance(finding, Finding) and np.isfinite(finding.value)


def test_measurement_is_deterministic(stored):
    img = stored["chest_xray_cardiomegaly"][0]
    assert read_finding("chest_xray", img) == read_finding("chest_xray", img.copy())


def test_finding_agreement_per_class_name(stored):
    classes = phantom_classes()
    by_key = {key: name for name, key in _class_keys(classes).items()}
    images, names = [], []
    for key in ("kidney_ct_normal", "kidney_ct_stone", "skin_nevus"):
        images += stored[key][:10]
        names += [by_key[key]] * 10
    images.append(stored["skin_nevus"][0])
    names.append("not_a_phantom_class")
    agreement = finding_agreement(images, names)
    assert set(agreement) == {
        by_key["kidney_ct_normal"],
        by_key["kidney_ct_stone"],
        by_key["skin_nevus"],
    }
    assert all(0.9 <= v <= 1.0 for v in agreement.values()), agreement


def test_a_healthy_image_labelled_diseased_disagrees(stored):
    classes = {"a": ("brain_mri", True)}
    healthy = stored["brain_mri_no_tumor"][:5]
    assert finding_agreement(healthy, ["a"] * 5, classes) == {"a": 0.0}


def _class_keys(classes: dict[str, tuple[str, bool]]) -> dict[str, str]:
    """MedImgs class name -> phantom class key."""
    keys = {
        (fam.name, d): k
        for fam in FAMILIES
        for k, d in ((fam.healthy, False), (fam.diseased, True))
    }
    return {name: keys[value] for name, value in classes.items()}


def test_benchmark_cells_read_the_finding_of_every_generated_phantom_image(stored):
    """The benchmark's per-image reading (``ops.eval.cells``): a unit of real stored images of
    a class agrees with that class; the same images under the class's opposite disagree; a
    class without a reader gives no reading."""
    from ops.eval.cells import _findings, finding_agreement
    from ops.eval.shards import Unit, UnitResult

    names = phantom_classes()
    fam = next(f for f in FAMILIES if f.name == "brain_mri")
    healthy, diseased = (
        next(n for n, (f, d) in names.items() if f == fam.name and d == flag)
        for flag in (False, True)
    )
    images = np.stack(stored[fam.diseased])
    units = [
        Unit(0, 0, diseased, 0, len(images), 0),
        Unit(1, 0, healthy, 0, len(images), 0),
    ]
    results = [
        UnitResult(u, np.zeros((len(images), 2)), None, 0.0, [], _findings(u.class_name, images))
        for u in units
    ]
    agreement = finding_agreement(results)
    assert agreement[diseased] >= 0.95 and agreement[healthy] <= 0.05
    assert _findings("not_a_phantom_class", images) is None
