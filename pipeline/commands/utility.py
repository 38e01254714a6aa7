"""``llcm utility``: train on synthetic, test on real, for every model of ``privacy.models``.

Generates (or reuses) each model's synthetic set, trains one fixed classifier recipe on real,
synthetic and real+synthetic images, tests each on the real test split and prints the table
(``reports/utility.parquet`` holds it per class; one MLflow run ``utility``).
"""

from __future__ import annotations

import argparse

import pandas as pd

from ops.config import add_config_args, config_from_args


def show(layout) -> int:
    """Print the saved utility and privacy tables (what ``make experiments`` ends with)."""
    import json

    from ops.privacy.stages import AUDIT_SUMMARY
    from ops.privacy.tables import audit_markdown, utility_markdown

    utility_file = layout.utility_table
    if not utility_file.is_file():
        raise FileNotFoundError(f"{utility_file} does not exist: run `llcm utility` first")
    print("Utility: train on synthetic, test on real\n")
    print(utility_markdown(pd.read_parquet(utility_file)))
    audit_file = layout.privacy_table
    if audit_file.is_file():
        summary = json.loads((layout.reports / AUDIT_SUMMARY).read_text())
        print("\nMemorisation audit\n")
        print(
            audit_markdown(pd.read_parquet(audit_file), summary["threshold"], summary["percentile"])
        )
    return 0


def run(args: argparse.Namespace) -> int:
    from ops.privacy.stages import build_utility
    from ops.privacy.tables import utility_markdown

    params, layout = config_from_args(args)
    if args.show:
        return show(layout)
    summary = build_utility(params, layout)
    print(utility_markdown(pd.read_parquet(summary["table"])))
    if summary["skipped"]:
        print(f"\nskipped (not on disk): {', '.join(summary['skipped'])}")
    return 0


def register(sub) -> None:
    parser = sub.add_parser("utility", help="train on synthetic, test on real (privacy.models)")
    parser.add_argument(
        "--show", action="store_true", help="print the saved tables instead of recomputing"
    )
    add_config_args(parser)
    parser.set_defaults(handler=run)
