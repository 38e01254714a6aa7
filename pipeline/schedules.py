"""Jobs and schedules of the code location.

``weekly_champion_benchmark`` re-measures the registry's champion every Monday at 03:00 UTC
(``champion_benchmark`` and its check ``champion_fid_regression``, which fails the run's check
when FID regressed). It is on by default: it only fires where a Dagster daemon runs
(``dagster dev``, a deployment), and a week without a champion records a skip, not a failure.
"""

from __future__ import annotations

import dagster as dg

CHAMPION_CRON = "0 3 * * 1"

champion_benchmark_job = dg.define_asset_job(
    "champion_benchmark_job",
    selection=dg.AssetSelection.assets("champion_benchmark"),
    description="Re-benchmark the registry champion and check it for FID regressions.",
)

weekly_champion_benchmark = dg.ScheduleDefinition(
    name="weekly_champion_benchmark",
    job=champion_benchmark_job,
    cron_schedule=CHAMPION_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Weekly FID re-benchmark of models:/<name>@champion (Monday 03:00 UTC).",
)

experiments_job = dg.define_asset_job(
    "experiments_job",
    selection=dg.AssetSelection.groups("distill_ablation", "privacy")
    | dg.AssetSelection.assets("benchmark", "dog_thorax_finetune"),
    description=(
        "The studies outside make run's budget (make experiments): the skip-k ablation and "
        "recipe-variant students, the phased student llcm_pcm, their benchmark cells, "
        "train-on-synthetic utility, the memorisation "
        "audit of every privacy.models model, and the unseen dog cardiac X-ray experiment."
    ),
)

jobs = [champion_benchmark_job, experiments_job]
schedules = [weekly_champion_benchmark]
