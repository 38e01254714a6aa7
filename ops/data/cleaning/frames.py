"""Which frames of a multi-frame DICOM or slices of a volume become MedImgs images.

MedImgs is a 2D training set: one picture per scan is the default, and that picture is the
*middle* non-empty frame, not the first. The first slice of a CT or MR volume is usually the
edge of the field of view (air, the top of the skull, a coil), the middle one shows the organ
the scan was taken for. ``all`` and ``every_k`` keep more slices for users who want them; each
kept frame becomes its own image with its own content id and records its index.

A frame is *empty* when its rendered 8-bit picture is one single grey (slices outside the
body, zero padding): it carries nothing to learn and is skipped whenever a file has more than
one frame. A single-frame file keeps its frame whatever it shows, as 2D images always have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

POLICIES = ("middle", "first", "all", "every_k")


@dataclass(frozen=True)
class FramePolicy:
    """``ingest.frame_policy`` and ``ingest.frame_every_k``."""

    policy: str = "middle"
    every_k: int = 4

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(
                f"ingest.frame_policy {self.policy!r} is not one of {', '.join(POLICIES)}"
            )
        if int(self.every_k) < 1:
            raise ValueError(f"ingest.frame_every_k must be at least 1, not {self.every_k}")

    def choose(self, candidates: Sequence[int]) -> list[int]:
        """The indices to keep among the non-empty ``candidates`` (ascending)."""
        if not candidates:
            return []
        if self.policy == "first":
            return [candidates[0]]
        if self.policy == "middle":
            return [candidates[(len(candidates) - 1) // 2]]
        if self.policy == "every_k":
            return list(candidates[:: int(self.every_k)])
        return list(candidates)


def is_empty(picture: np.ndarray) -> bool:
    """True when an 8-bit rendering holds a single value (per channel, for colour)."""
    flat = picture.reshape(-1, picture.shape[-1]) if picture.ndim == 3 else picture.reshape(-1)
    return bool(np.all(flat.max(axis=0) == flat.min(axis=0)))


def select_rendered(
    count: int, render: Callable[[int], np.ndarray], policy: FramePolicy
) -> list[tuple[int, np.ndarray]]:
    """Render frames ``0..count-1`` and return (index, picture) of those the policy keeps.

    All frames are rendered so that ``middle`` means the middle of the frames that show
    something; a single frame is returned even when empty (see the module docstring)."""
    if count == 1:
        return [(0, render(0))]
    pictures = {}
    for index in range(count):
        picture = render(index)
        if not is_empty(picture):
            pictures[index] = picture
    return [(index, pictures[index]) for index in policy.choose(sorted(pictures))]
