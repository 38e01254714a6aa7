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

# Training steps already use every core through torch's thread pool; running two at once on a
# small machine only makes both slower. Raise LLCM_MAX_CONCURRENT on a machine with room.
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
