"""The Dagster code location: ``dagster dev -m pipeline.definitions``.

Assets and asset checks are collected from every module of the ``assets`` package, so adding a
stage is adding a module; jobs and schedules live in their own modules.
"""

from __future__ import annotations

import os

import dagster as dg

import assets
from pipeline.launcher import LauncherResource
from pipeline.resources import default_resources
from pipeline.schedules import jobs, schedules

all_assets = dg.load_assets_from_package_module(assets)
all_checks = dg.load_asset_checks_from_package_module(assets)

# One asset at a time by default: a stage left on torch's default thread pool (or a GPU stage)
# uses the whole machine, and two at once only make both slower. `make run` sets 2, because its
# tiny stages each train on one thread (params.yaml `threads`) and the machine has 2 cores.
executor = dg.multiprocess_executor.configured(
    {"max_concurrent": int(os.environ.get("LLCM_MAX_CONCURRENT", "1"))}
)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    # The launcher comes from LLCM_LAUNCHER_* variables (default: in process); see deployment/.
    resources={**default_resources(), "launcher": LauncherResource.from_env()},
    jobs=jobs,
    schedules=schedules,
    executor=executor,
)
