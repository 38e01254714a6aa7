"""Process runtime for trainers: the accelerator, seeds and RNG states.

One code path for one CPU process, several CPU processes (gloo) and several GPUs (NCCL): the
trainer always creates its ``Accelerator`` here and lets ``accelerate launch`` (or torchrun)
decide the world size through the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


def launched_world_size() -> int:
    """Processes of the launch this process belongs to (1 when not under accelerate/torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def leave_process_group() -> None:
    """Wait for every rank, then tear the process group down, before a launched process exits.

    Without it a rank that finishes first exits while gloo's threads are still live: about one
    two-rank launch in four here died with "terminate called without an active exception"
    (SIGABRT) after its work was done. Both entry points (``ops.entry``, ``pipeline.pipes_entry``)
    end with it; outside a launch it is a no-op.
    """
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    state.destroy_process_group()


def on_main_process(fn: Callable[[], T]) -> T:
    """Run ``fn`` on the main process only and hand its result to every process.

    For work that must happen once even when a stage function runs on every rank of a launch
    (writing shared files, encoding the latents); the other ranks wait for it.
    """
    if launched_world_size() == 1:
        return fn()
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=not torch.cuda.is_available())
    result = [fn() if state.is_main_process else None]
    state.wait_for_everyone()
    broadcast_object_list(result, from_process=0)
    return result[0]


def create_accelerator(mixed_precision: str = "no"):
    """An ``Accelerator`` on GPU when there is one, else on CPU.

    Why ``cpu=True`` explicitly: ``accelerate launch --cpu --num_processes 2`` silently starts a
    single process, so multi-process CPU runs are launched as ``--multi_gpu`` and the trainer
    asks for CPU itself; accelerate then uses the gloo backend. In a single process the
    accelerate state is reset first, so that several stages (with different precisions) can
    run one after the other in one Python process (tests, in-process Dagster executors).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if launched_world_size() == 1:
        AcceleratorState._reset_state()
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run torch on ``n`` intra-op CPU threads for the block (None: leave torch's default).

    Why the trainers default to one: the tiny models' small convolutions gain little from a
    second thread (measured: teacher step 0.31 s on 1 thread vs 0.28 s on 2, idle 2-core
    machine), while OpenMP workers spin-wait whenever another process wants the cores (the
    same step took 1.3-2.5 s on 2 threads next to one busy neighbour, 0.36 s on 1 thread).
    Under ``accelerate launch`` each process gets ``OMP_NUM_THREADS=1`` anyway.
    """
    if not n:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch identically on every process.

    The same seed on every rank gives identical initial weights (DDP broadcasts rank 0's
    anyway); per-sample randomness of a step comes from ``batches.StepBatch``, not from here.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Python, numpy and torch (CPU and CUDA) RNG states as safetensors tensors + metadata."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    meta = {
        "numpy": json.dumps([kind, int(pos), int(has_gauss), float(gauss)]),
        "python": json.dumps([version, list(internal), gauss_next]),
    }
    return tensors, meta


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Inverse of ``capture_rng_state`` (CUDA states only for devices that exist)."""
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        for i, state in enumerate(states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, i)
    kind, pos, has_gauss, gauss = json.loads(meta["numpy"])
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, gauss))
    version, internal, gauss_next = json.loads(meta["python"])
    random.setstate((version, tuple(internal), gauss_next))
