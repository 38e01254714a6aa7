"""Decode throughput of MedImgs cleaning: 1 worker vs ``ingest.workers``, side by side.

    .venv/bin/python benchmarks/ingest_throughput.py [--preset tiny] [--workers N] [--per-class N]

Generates the phantom source (in ``$LLCM_DATA/tmp/bench-ingest``, inside the data directory),
lists its files and archive members once, then times the decode step (read, sniff, decode,
normalise, hash, stage JPEG) with each worker count on the same items, alternating the order
over ``--repeats`` rounds so machine load hits both alike. Process start-up is part of the
multi-worker time, as it is in a real run. Also checks both runs give identical outcomes.

Then, side by side in the same run, the per-file decode throughput (read, sniff, decode,
select frames, normalise, hash, stage JPEG; one worker) of real compressed DICOM (the test files
pydicom ships in RLE, JPEG, JPEG-LS and JPEG 2000 that its plugins decode) and of real NIfTI
volumes (nibabel's example files), copied into the same data directory first. Files/s counts
raw files, frames/s the frames or slices kept under ``ingest.frame_policy``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Worker processes re-import this file as their main module, so the heavy imports live inside
# the functions: a worker then pays only for the decoding modules it actually needs.


def time_decode(items, cfg, staging: Path, workers: int) -> tuple[float, list]:
    from ops.data.cleaning.build import decode_all, settings_from

    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    settings = settings_from(cfg, staging)
    start = time.perf_counter()
    outcomes = decode_all(items, settings, workers)
    return time.perf_counter() - start, outcomes


def real_scans(folder: Path) -> dict[str, list[Path]]:
    """Copies of the compressed DICOM and NIfTI test files pydicom and nibabel ship."""
    import warnings

    import pydicom
    from nibabel.testing import data_path
    from pydicom.data import get_testdata_files

    groups: dict[str, list[Path]] = {"compressed DICOM": [], "NIfTI": []}
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted({Path(p) for p in get_testdata_files() if os.path.isfile(p)}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, force=True)
                syntax = ds.file_meta.TransferSyntaxUID
                ok = syntax.is_compressed and ds.pixel_array is not None
            except Exception:
                ok = False
        if ok:
            groups["compressed DICOM"].append(Path(shutil.copy(path, folder / path.name)))
    for path in sorted(Path(data_path).glob("*.nii*")):
        if ".dconn." not in path.name:
            groups["NIfTI"].append(Path(shutil.copy(path, folder / path.name)))
    return groups


def time_formats(groups: dict[str, list[Path]], cfg, staging: Path, repeats: int) -> dict:
    """Best seconds per group over ``repeats`` alternating rounds, with files and frames."""
    from ops.data.cleaning.build import settings_from
    from ops.data.cleaning.items import WorkItem
    from ops.data.cleaning.worker import process_chunk
    from ops.data.sources.registry import ClassLabels

    labels = ClassLabels("bench", "human", "head", "MR", "normal")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    settings = settings_from(cfg, staging)
    items = {
        name: [WorkItem("bench", p.name, str(p), None, labels) for p in paths]
        for name, paths in groups.items()
    }
    best: dict[str, tuple[float, int, int]] = {}
    names = list(items)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            start = time.perf_counter()
            outcomes = process_chunk(items[name], settings)
            seconds = time.perf_counter() - start
            kept = sum(1 for o in outcomes if o.reason is None)
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, len(items[name]), kept)
    return best


def print_formats(best: dict[str, tuple[float, int, int]], cfg) -> None:
    print(
        f"per-format decode, 1 worker, frame_policy {cfg.get('frame_policy', 'middle')}, "
        f"{cfg['resolution']}px:"
    )
    print(f"{'format':>17} {'files':>6} {'frames':>7} {'best s':>8} {'files/s':>8} {'frames/s':>9}")
    for name, (seconds, files, frames) in best.items():
        print(
            f"{name:>17} {files:>6} {frames:>7} {seconds:>8.3f} {files / seconds:>8.1f} "
            f"{frames / seconds:>9.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--workers", type=int, default=None, help="default: ingest.workers")
    parser.add_argument("--per-class", type=int, default=None, help="default: the preset's")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", default=None, help="data directory (default: $LLCM_DATA)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from ops.config import load_params, stage_config
    from ops.data.cleaning.build import enumerate_all, load_raw, settings_from
    from ops.data.sources.materialize import materialize_specs
    from ops.data.sources.registry import load_registry
    from ops.layout import DataLayout

    params = load_params(preset=args.preset)
    cfg = stage_config(params, "ingest")
    if args.per_class:
        cfg["phantoms_per_class"] = args.per_class
    workers = args.workers or int(cfg["workers"])
    bench = DataLayout.from_env(args.data).tmp / "bench-ingest"
    shutil.rmtree(bench, ignore_errors=True)
    layout = DataLayout(bench)
    materialize_specs(
        [load_registry(cfg.get("registry"))["phantoms"]], layout, {**cfg, "workers": 1}
    )
    index, specs = load_raw(layout)
    settings = settings_from(cfg, layout.tmp / "staging")
    items, _ = enumerate_all(layout, index, specs, settings.max_file_bytes)

    times: dict[int, list[float]] = {1: [], workers: []}
    results = {}
    for round_ in range(args.repeats):
        order = (1, workers) if round_ % 2 == 0 else (workers, 1)
        for count in order:
            seconds, outcomes = time_decode(items, cfg, layout.tmp / f"staging-{count}", count)
            times[count].append(seconds)
            results[count] = sorted(outcomes, key=lambda o: o.source_file)
    same = results[1] == results[workers]
    best = {count: min(values) for count, values in times.items()}
    print(
        f"preset {args.preset}: {len(items)} files to decode at {cfg['resolution']}px, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'workers':>8} {'best s':>8} {'median s':>9} {'images/s':>9}")
    for count in times:
        print(
            f"{count:>8} {best[count]:>8.2f} {statistics.median(times[count]):>9.2f} "
            f"{len(items) / best[count]:>9.1f}"
        )
    print(
        f"speed-up with {workers} workers: {best[1] / best[workers]:.2f}x "
        f"(outcomes identical: {same})"
    )
    groups = real_scans(layout.tmp / "real-scans")
    print_formats(time_formats(groups, cfg, layout.tmp / "staging-scans", args.repeats), cfg)
    shutil.rmtree(bench, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
