"""Sharded benchmark generation: wall time of the same cells in 1 process and in N launched
processes, measured side by side in one run, and a check that the numbers are equal.

    .venv/bin/python benchmarks/sharded_generation.py [--data DIR] [--processes 2] \\
        [--models teacher_ddim llcm] [--steps 4 20] [--repeats 2]

Needs a finished pipeline in the data directory (the models, the domain classifier, the
manifest). Works in a scratch data directory under ``<data>/tmp/`` whose ``medimgs`` and
``models`` link to the real ones, so the real reports are untouched. Rounds alternate
1 process / N processes so machine noise hits both alike. Two times per run:

* ``total``: the whole ``llcm benchmark --force`` call, including the N-process launch
  (interpreter start-up, imports, model loading on every rank): what a user waits for;
* ``generation``: the cells' own ``wall_seconds`` (generation and featurisation only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from ops.layout import DataLayout

REPO = Path(__file__).resolve().parent.parent


def scratch_layout(real: DataLayout) -> DataLayout:
    root = real.tmp / "sharded_generation" / "data"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for name in ("medimgs", "models"):
        (root / name).symlink_to(real.root / name)
    return DataLayout.from_env(root)


def run_once(layout: DataLayout, processes: int, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, "-m", "pipeline.cli", "benchmark", "--force", "--no-mlflow",
        "--models", *args.models, "--steps", *map(str, args.steps),
        "--num-processes", str(processes), "--data", str(layout.root),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    total = time.perf_counter() - t0
    cells = pd.concat(pd.read_parquet(p) for p in (layout.reports / "cells").glob("*.parquet"))
    ok = cells[cells["status"] == "ok"]
    pooled = ok[ok["class_name"] == "all"].sort_values(["model", "steps"])
    return {
        "total": total,
        "generation": float(pooled["wall_seconds"].sum()),
        "fid": pooled[["model", "steps", "fid", "kid"]].reset_index(drop=True),
        "processes": set(ok["processes"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["teacher_ddim", "llcm"])
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 20])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    layout = scratch_layout(DataLayout.from_env(args.data))
    runs: dict[int, list[dict]] = {1: [], args.processes: []}
    for _ in range(args.repeats):
        for n in runs:
            runs[n].append(run_once(layout, n, args))
            print(f"  {n} process(es): {runs[n][-1]['total']:.1f} s", file=sys.stderr)
    one, many = runs[1], runs[args.processes]
    for a in one:
        for b in many:
            pd.testing.assert_frame_equal(a["fid"], b["fid"], check_exact=True)
    assert all(r["processes"] == {args.processes} for r in many)
    cells = len(one[0]["fid"])
    print(f"{cells} cells ({', '.join(args.models)} x steps {args.steps}), "
          f"median of {args.repeats} interleaved rounds:")  # fmt: skip
    print(f"| time (s) | 1 process | {args.processes} processes | speed-up |")
    print("|---|---:|---:|---:|")
    for key in ("total", "generation"):
        t1 = statistics.median(r[key] for r in one)
        tn = statistics.median(r[key] for r in many)
        print(f"| {key} | {t1:.1f} | {tn:.1f} | {t1 / tn:.2f}x |")
    print("FID and KID of every cell: identical in all runs (checked exactly)")
    shutil.rmtree(layout.root.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
