"""Worker processes for decoding and phantom drawing.

Start method ``forkserver`` (``spawn`` where unavailable): never ``fork``, because the parent
may be a threaded Dagster process, and not plain ``spawn``, because spawn re-imports the
parent's main module (pandas, Dagster...) in every worker, which costs seconds per pool. The
fork server preloads only the given worker module, starts once per process and forks cheaply
after that.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor


def process_pool(workers: int, preload: str) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes that run functions of module ``preload``."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([preload])  # no effect once the server runs
    else:  # pragma: no cover - platforms without fork
        context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)
