"""The global batch plan: which items, and which random numbers, each optimisation step uses.

A step's global batch and every random draw for it (noise, timesteps, prompt dropout) are a
function of ``(seed, step)`` and of a sample's position in the global batch only. Each process
takes its contiguous share of rows (``global_batch_size / world_size``), so one process, N
processes and a run resumed from a checkpoint all see the same numbers, and DDP's gradient mean
over processes equals the single-process gradient of the whole global batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and Python runs)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class StepBatch:
    """This process's share of one step's global batch, and the step's random numbers.

    Random draws (``randn``, ``rand``, ``randint``) are made for the whole global batch from a
    generator seeded by ``(seed, step)``, then sliced to this process's rows. Make the draws in
    the same order on every process (the trainer's code does).
    """

    step: int
    indices: torch.Tensor  # item indices of this process's rows
    rows: slice  # this process's rows within the global batch
    global_size: int
    generator: torch.Generator

    def __len__(self) -> int:
        return len(self.indices)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal noise, ``[local_batch, *shape]``."""
        x = torch.randn((self.global_size, *shape), generator=self.generator)
        return x[self.rows]

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1), ``[local_batch, *shape]``."""
        return torch.rand((self.global_size, *shape), generator=self.generator)[self.rows]

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """Integers in [low, high), ``[local_batch, *shape]``."""
        x = torch.randint(low, high, (self.global_size, *shape), generator=self.generator)
        return x[self.rows]


class GlobalBatchPlan:
    """An endless stream of items in per-epoch shuffled order, cut into global batches.

    Step ``s`` uses stream positions ``[s * B, (s + 1) * B)``; epoch ``e``'s order is a
    permutation seeded by ``(seed, e)``. The data order position of a checkpoint is therefore
    just its step (``samples_seen = step * B``), whatever the number of processes.
    """

    def __init__(
        self, num_items: int, global_batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if num_items <= 0:
            raise ValueError("cannot train on an empty dataset")
        if global_batch_size % world_size:
            raise ValueError(
                f"global batch size {global_batch_size} is not divisible by {world_size} processes"
            )
        self.num_items = num_items
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._orders: dict[int, torch.Tensor] = {}

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.world_size

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "order", epoch))
            self._orders = {epoch: torch.randperm(self.num_items, generator=gen)}
        return self._orders[epoch]

    def global_indices(self, step: int) -> torch.Tensor:
        """Item indices of step ``step``'s whole global batch."""
        start = step * self.global_batch_size
        positions = torch.arange(start, start + self.global_batch_size)
        epochs, offsets = positions // self.num_items, positions % self.num_items
        out = torch.empty_like(positions)
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            out[mask] = self.epoch_order(epoch)[offsets[mask]]
        return out

    def batch(self, step: int) -> StepBatch:
        rows = slice(self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "step", step))
        return StepBatch(step, self.global_indices(step)[rows], rows, self.global_batch_size, gen)
