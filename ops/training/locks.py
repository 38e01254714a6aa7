"""An exclusive lock across processes on one machine, for a cache that two stages may fill at
once (the Dagster executor runs up to ``LLCM_MAX_CONCURRENT`` assets side by side).

Why: ``utility`` and ``privacy_audit`` judge the same synthetic sets; when both found a set
missing they generated it together, and one removed the directory the other was reading
(measured: ``make experiments`` failed with a missing ``0000.png``). ``fcntl.flock`` on a lock
file beside the cache makes the second wait and then find the set fresh.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
