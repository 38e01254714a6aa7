"""The Dagster code location: ``dagster dev -m pipeline.definitions``.

Assets and asset checks are collected from every module of the ``assets`` package, so adding a
stage is adding a module; jobs and schedules live in their own modules.
"""

from __future__ import annotations

import dagster as dg

import assets
from pipeline.resources import default_resources

all_assets = dg.load_assets_from_package_module(assets)
all_checks = dg.load_asset_checks_from_package_module(assets)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    resources=default_resources(),
)
