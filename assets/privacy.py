"""Assets ``utility`` (train on synthetic, test on real) and ``privacy_audit`` (memorisation:
does a generated image copy a training image), on the same synthetic sets of every model of
``privacy.models`` (stage functions in ``ops.privacy.stages``).

They are the questions that decide whether a user can use and share the output. Not in
``make run`` (its 30-minute budget); ``make experiments`` and the ``experiments`` job run them.
"""

import dagster as dg

from assets.metadata import picture
from pipeline.resources import DataResource, ParamsResource

MODELS = ["teacher", "llcm", "lcm", "llcm2"]
EMBEDDED_PAIRS = 4


@dg.asset(
    deps=["medimgs_manifest", *MODELS],
    group_name="privacy",
    kinds={"pytorch"},
    description="Train one classifier recipe on real / synthetic / real+synthetic, test on real.",
)
def utility(params: ParamsResource, data: DataResource) -> dg.MaterializeResult:
    import pandas as pd

    from ops.privacy.stages import build_utility
    from ops.privacy.tables import utility_markdown

    summary = build_utility(params.load(), data.layout)
    table = pd.read_parquet(summary["table"])
    return dg.MaterializeResult(
        metadata={
            "table": dg.MetadataValue.md(utility_markdown(table)),
            "per_class_train_images": summary["per_class_train_images"],
            "n_test": summary["n_test"],
            "skipped": dg.MetadataValue.json(summary["skipped"]),
            "mlflow_run_id": summary["mlflow_run_id"],
            "path": dg.MetadataValue.path(summary["table"]),
        }
    )


@dg.asset(
    deps=["medimgs_manifest", *MODELS],
    group_name="privacy",
    kinds={"pytorch"},
    description="Nearest training image of every synthetic image; flags the too-close ones.",
)
def privacy_audit(params: ParamsResource, data: DataResource) -> dg.MaterializeResult:
    import pandas as pd

    from ops.privacy.stages import build_privacy_audit
    from ops.privacy.tables import audit_markdown

    summary = build_privacy_audit(params.load(), data.layout)
    table = pd.read_parquet(summary["table"])
    pairs = {
        f"closest_pairs_{model}": picture(path, f"closest pairs, {model}")
        for model, path in list(summary["pairs"].items())[:EMBEDDED_PAIRS]
    }
    return dg.MaterializeResult(
        metadata={
            "table": dg.MetadataValue.md(
                audit_markdown(table, summary["threshold"], summary["percentile"])
            ),
            "threshold": float(summary["threshold"]),
            "n_reference": summary["n_reference"],
            "skipped": dg.MetadataValue.json(summary["skipped"]),
            "mlflow_run_id": summary["mlflow_run_id"],
            **pairs,
        }
    )


@dg.asset_check(
    asset=privacy_audit,
    description="No model's memorised share exceeds the rate unseen real images reach by design.",
)
def privacy_audit_within_reference_rate(data: DataResource) -> dg.AssetCheckResult:
    import json

    from ops.privacy.stages import AUDIT_SUMMARY

    summary = json.loads((data.layout.reports / AUDIT_SUMMARY).read_text())
    shares = {m: s["share_memorised"] for m, s in summary["models"].items()}
    # Unseen real images fall below the threshold at about `percentile` per cent: twice that is
    # a model copying more than chance would explain. Nothing measured is a failure, not a pass.
    limit = 2 * float(summary["percentile"]) / 100
    return dg.AssetCheckResult(
        passed=bool(shares) and all(share <= limit for share in shares.values()),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"shares": dg.MetadataValue.json(shares), "limit": limit},
    )
