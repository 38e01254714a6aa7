"""Sharded benchmark generation: which process generates which units, and real 2-process runs
(the Dagster asset through the ``local`` launcher, and ``llcm benchmark --num-processes 2``,
both ``accelerate launch`` with gloo) whose cells equal a one-process run's."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pytest
import torch
from bench_fixtures import bench_params, bench_world, linked_layout, write_params
from dagster_fixtures import asset_resources
from PIL import Image

from ops.eval.context import POOLED, read_cell
from ops.eval.runner import plan, run_benchmark
from ops.eval.shards import UnitResult, cell_units, in_canonical_order, shard

MEASURED = ["fid", "kid", "n", "n_ref", "class_fidelity"]


def _units(classes=("a", "b", "c"), per_class=10, batch=4):
    return cell_units(list(classes), per_class, batch, lambda name, r, b: hash((name, r, b)) % 1000)


def test_units_cover_every_image_once_and_shards_are_disjoint_and_balanced():
    units = _units()
    assert [(u.class_name, u.start, u.n) for u in units[:3]] == [("a", 0, 4), ("a", 4, 4),
                                                                 ("a", 8, 2)]  # fmt: skip
    assert {name: sum(u.n for u in units if u.class_name == name) for name in "abc"} == {
        "a": 10, "b": 10, "c": 10
    }  # fmt: skip
    for world in (1, 2, 3, 4, 9, 12):
        shards = [shard(units, rank, world) for rank in range(world)]
        assert sorted(u for s in shards for u in s) == units  # complete, nothing twice
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # a seed belongs to (class, batch), not to the process that happens to generate it
    assert [u.seed for u in shard(units, 1, 2)] == [u.seed for u in units[1::2]]
    with pytest.raises(ValueError, match="outside a world"):
        shard(units, 2, 2)


def test_reassembly_restores_canonical_order_and_rejects_lost_or_doubled_units():
    units = _units(per_class=6, batch=4)
    results = [UnitResult(u, np.full((u.n, 2), i), None, 0.0, []) for i, u in enumerate(units)]
    by_rank = shard(results, 0, 2) + shard(results, 1, 2)  # how the gather concatenates them
    assert [r.unit for r in in_canonical_order(by_rank, units)] == units
    with pytest.raises(RuntimeError, match="missing"):
        in_canonical_order(results[:-1], units)
    with pytest.raises(RuntimeError, match="expected 6"):
        in_canonical_order(results + results[:1], units)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    return bench_world(tmp_path_factory)


def _params():
    """Two batches per class, so each class is split across the two processes."""
    params = bench_params()
    params["benchmark"].update(models=["teacher_ddim", "llcm"], generation_batch_size=2)
    return params


def _assert_same_cells(one, two, cells, processes):
    for model, steps in cells:
        a, b = read_cell(one, model, steps), read_cell(two, model, steps)
        assert (a["status"] == "ok").all() and (b["status"] == "ok").all()
        assert set(a["processes"]) == {1} and set(b["processes"]) == {processes}
        assert list(a["class_name"]) == list(b["class_name"]) and POOLED in set(a["class_name"])
        for column in MEASURED:  # bit-for-bit, not approximately
            np.testing.assert_array_equal(a[column].to_numpy(), b[column].to_numpy(), column)
        grid_a, grid_b = (np.asarray(Image.open(x.root / c["sample_grid"].iloc[0]))
                          for x, c in ((one, a), (two, b)))  # fmt: skip
        np.testing.assert_array_equal(grid_a, grid_b)


def test_two_launched_processes_measure_exactly_what_one_process_measures(
    world, tmp_path, omp_one_thread
):
    from assets.benchmark import benchmark
    from pipeline.cli import main

    torch.set_num_threads(1)
    params = _params()
    cells = plan(params)
    one = linked_layout(world, tmp_path / "one")
    single = run_benchmark(params, one, log_mlflow=False)
    assert single["world_size"] == 1 and sorted(single["measured"]) == sorted(
        f"{m}__{s}" for m, s in cells
    )

    # The Dagster asset, launched by the local launcher: 2 gloo ranks under Dagster Pipes.
    params_file = write_params(params, tmp_path / "params.yaml")
    two = linked_layout(world, tmp_path / "two")
    resources = asset_resources(two.root, params_file=params_file, processes=2)
    result = dg.materialize([benchmark], resources=resources)
    assert result.success
    [event] = result.asset_materializations_for_node("benchmark")
    assert event.metadata["world_size"].value == 2
    assert event.metadata["ran_now"].value == len(cells)
    _assert_same_cells(one, two, cells, processes=2)
    fid = json.loads((two.reports / "benchmark.json").read_text())["fid"]
    assert fid == json.loads((one.reports / "benchmark.json").read_text())["fid"]

    # The same through the CLI (dvc's path): benchmark.num_processes launches accelerate itself.
    rc = main(["benchmark", "--models", "llcm", "--steps", "1", "--force", "--no-mlflow",
               "--num-processes", "2", "--params", str(params_file), "--data", str(two.root)])  # fmt: skip
    assert rc == 0
    _assert_same_cells(one, two, [("llcm", 1)], processes=2)
