"""Deduplicate kept images by content and split them into train and test, deterministically.

Order is everything: outcomes are sorted by (source, source_file) before deduplication, so the
first file of a set of identical pictures is kept whatever order workers finished in. The split
ranks each class's images by a seeded hash of their image id: adding or removing one image
moves no other image between splits, and the same seed gives the same split.
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
    for outcome in sorted(outcomes, key=lambda o: (o.source, o.source_file)):
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
    """image_id -> "train" | "test". Per class: the lowest-ranked ``n_test_images`` images go to
    test; of the rest, those ranked beyond ``max_train_per_class`` overflow to test too."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for outcome in kept:
        assert outcome.labels is not None and outcome.image_id is not None
        by_class[outcome.labels.class_name].append(outcome.image_id)
    splits: dict[str, str] = {}
    for ids in by_class.values():
        ranked = sorted(ids, key=lambda iid: split_rank(seed, iid))
        n_test = n_test_images(len(ranked), test_fraction)
        for pos, iid in enumerate(ranked):
            in_train = n_test <= pos < n_test + max_train_per_class
            splits[iid] = "train" if in_train else "test"
    return splits
