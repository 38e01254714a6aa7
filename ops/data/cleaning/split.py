"""Deduplicate kept images by content and split them into train and test, deterministically.

Order is everything: outcomes are sorted by (source, source_file, frame_index) before
deduplication, so the first file of a set of identical pictures is kept whatever order workers
finished in. The split ranks each class's files by a seeded hash of their first image id:
adding or removing one file moves no other file between splits, and the same seed gives the
same split. The frames of one file (slices of one volume, one patient) always share a split:
slices of one scan on both sides would let the test set leak into training.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable

from ops.data.cleaning.items import Outcome


def deduplicate(outcomes: Iterable[Outcome]) -> tuple[list[Outcome], list[tuple[Outcome, Outcome]]]:
    """Kept outcomes with unique image ids, and (duplicate, the kept original) pairs."""
    first: dict[str, Outcome] = {}
    duplicates = []
    for outcome in sorted(outcomes, key=lambda o: o.key):
        if outcome.reason is not None or outcome.image_id is None:
            continue
        original = first.setdefault(outcome.image_id, outcome)
        if original is not outcome:
            duplicates.append((outcome, original))
    return list(first.values()), duplicates


def split_rank(seed: int, image_id: str) -> str:
    return hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()


def n_test_images(n: int, test_fraction: float) -> int:
    """Images of an n-image class that go to test: round(n * f), but at least one when the
    class has two or more images and f > 0, so every class can be evaluated."""
    if n < 2 or test_fraction <= 0:
        return 0
    return min(n - 1, max(1, round(n * test_fraction)))


def assign_splits(
    kept: Iterable[Outcome], test_fraction: float, max_train_per_class: int, seed: int
) -> dict[str, str]:
    """image_id -> "train" | "test". Per class, files (with all their kept frames) are ranked;
    those starting before ``n_test_images`` images go to test, of the rest those starting
    beyond ``max_train_per_class`` train images overflow to test too. With one frame per
    file this is a ranking of images."""
    by_class: dict[str, dict[tuple[str, str], list[str]]] = defaultdict(lambda: defaultdict(list))
    for outcome in kept:
        assert outcome.labels is not None and outcome.image_id is not None
        by_class[outcome.labels.class_name][(outcome.source, outcome.source_file)].append(
            outcome.image_id
        )
    splits: dict[str, str] = {}
    for files in by_class.values():
        groups = sorted(files.values(), key=lambda ids: split_rank(seed, min(ids)))
        n_test = n_test_images(sum(len(ids) for ids in groups), test_fraction)
        pos = 0
        for ids in groups:
            in_train = n_test <= pos < n_test + max_train_per_class
            for iid in ids:
                splits[iid] = "train" if in_train else "test"
            pos += len(ids)
    return splits
