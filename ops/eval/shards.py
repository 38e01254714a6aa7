"""Sharded generation of a benchmark cell: which process generates which images, and how the
pieces come back together so that N processes measure exactly what one process measures.

At paper scale a cell is 175,000 images (5,000 per class x 35 classes) per step count: one GPU
is not enough. The cell is cut into *units*, one per (class, batch) with its own seed
(``ops.eval.context.image_seed``), so an image depends only on its class and batch, never on which
process made it. Units are dealt round-robin to the ranks (each process gets its own seeds and
classes); every rank generates and featurises its units; rank 0 gathers the results, puts
them back in the canonical order (class, then batch) and accumulates the moments batch by
batch, the very sequence of ``FeatureStats.update`` calls a single process makes. FID, KID and
class fidelity are then bit-for-bit the single-process numbers (tests/test_benchmark_shards.py).

Only features, predictions and the few grid samples travel, never the images: a 2048-d float32
Inception feature is 8 KB per image, 1.4 GB for a whole 175k cell at most, gathered one cell at
a time.

``ProcessGroup`` is the one place that talks to ``torch.distributed``; the process group is
whatever ``accelerate launch`` / torchrun set up (gloo on CPU, NCCL on GPU), initialised
through accelerate's ``PartialState`` like the trainers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True, order=True)
class Unit:
    """One generation batch of a cell: ``n`` images of a class from one seed."""

    class_index: int  # position of the class in the evaluated classes (canonical order)
    batch: int  # counts on across generation seeds: (seed 0's batches, seed 1's, ...)
    class_name: str = field(compare=False)
    start: int = field(compare=False)  # index of its first image within the class
    n: int = field(compare=False)
    seed: int = field(compare=False)
    replicate: int = field(compare=False, default=0)  # which generation seed


@dataclass
class UnitResult:
    """What a rank sends back for a unit: features, class predictions, generation seconds, the
    images the cell's grid picture keeps (only from units at the start of a class) and, for
    phantom classes, whether each image's finding read from its pixels matches the class."""

    unit: Unit
    features: np.ndarray
    predictions: np.ndarray | None
    seconds: float
    samples: list[np.ndarray]
    findings: np.ndarray | None = None


def cell_units(
    classes: Sequence[str],
    images_per_class: int,
    batch_size: int,
    seed_of: Callable[[str, int, int], int],
    replicates: int = 1,
) -> list[Unit]:
    """Every unit of a cell in canonical order: per class, ``replicates`` generation seeds of
    ``images_per_class`` images each; ``seed_of(class_name, replicate, batch)`` is the seed of
    a batch (``batch`` counted within its replicate)."""
    if images_per_class < 1 or batch_size < 1 or replicates < 1:
        raise ValueError("images_per_class, generation_batch_size and seeds must be >= 1")
    units = []
    for c, name in enumerate(classes):
        index = 0
        for r in range(replicates):
            for b, start in enumerate(range(0, images_per_class, batch_size)):
                n = min(batch_size, images_per_class - start)
                seed = seed_of(name, r, b)
                units.append(Unit(c, index, name, r * images_per_class + start, n, seed, r))
                index += 1
    return units


def shard(units: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The units (or any work items) of ``rank``: round-robin, so every rank gets a share of
    every class's batches when there are many and whole classes when batches are few; disjoint
    and complete."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return list(units[rank::world_size])


def in_canonical_order(results: Sequence[UnitResult], expected: Sequence[Unit]) -> list[UnitResult]:
    """``results`` sorted by (class, batch), checked to be exactly the ``expected`` units: a
    missing or duplicated unit would silently bias the statistics."""
    ordered = sorted(results, key=lambda r: r.unit)
    got = [r.unit for r in ordered]
    if got != sorted(expected):
        missing = sorted(set(expected) - set(got))
        raise RuntimeError(
            f"gathered {len(got)} units, expected {len(expected)}; missing {missing[:3]}"
        )
    return ordered


class ProcessGroup:
    """This process's place in a launch: rank, world size, device, and the three collectives the
    benchmark needs. One process (no launch) is a group of one whose collectives are no-ops."""

    def __init__(self, rank: int = 0, world_size: int = 1, device: str = "cpu") -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = device

    @classmethod
    def current(cls) -> ProcessGroup:
        """The launch this process belongs to (``WORLD_SIZE`` > 1), else a group of one."""
        import torch

        from ops.training.runtime import launched_world_size

        if launched_world_size() <= 1:
            return cls(0, 1, "cuda" if torch.cuda.is_available() else "cpu")
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes, str(state.device))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (decisions such as which cells to run)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, items: list[T]) -> list[T] | None:
        """Every rank's ``items`` concatenated on rank 0 (rank order); None on other ranks."""
        if not self.distributed:
            return list(items)
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(list(items), out, dst=0)
        if out is None:
            return None
        return [item for part in out for item in part]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()
