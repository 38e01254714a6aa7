"""Asset ``domain_classifier``: the MedImgs CNN whose penultimate layer is the benchmark's FID
feature space (stage function ``ops.eval.classifier.build_domain_classifier``), with a check that it
tells the classes apart better than chance (otherwise its FID would measure nothing)."""

import dagster as dg

from pipeline.resources import DataResource, ParamsResource


def accuracy_markdown(per_class: dict) -> str:
    lines = ["| class | test accuracy |", "| --- | ---: |"]
    for name, value in per_class.items():
        lines.append(f"| {name} | {'–' if value is None else f'{value:.1%}'} |")
    return "\n".join(lines)


@dg.asset(
    deps=["medimgs_manifest"],
    group_name="benchmark",
    kinds={"pytorch", "safetensors"},
    description="Domain classifier on MedImgs: FID/KID features and class fidelity.",
)
def domain_classifier(params: ParamsResource, data: DataResource) -> dg.MaterializeResult:
    from ops.eval.classifier import MODEL_NAME
    from ops.eval.classifier_training import build_domain_classifier

    summary = build_domain_classifier(params.load(), data.layout)
    return dg.MaterializeResult(
        metadata={
            "test_accuracy": float(summary["test_accuracy"]),
            "train_accuracy": float(summary["train_accuracy"]),
            "per_class": dg.MetadataValue.md(accuracy_markdown(summary["per_class_accuracy"])),
            "num_classes": summary["num_classes"],
            "feature_dim": summary["feature_dim"],
            "n_train": summary["n_train"],
            "n_test": summary["n_test"],
            "train_seconds": summary["train_seconds"],
            "classes_without_training_rows": dg.MetadataValue.json(
                summary["classes_without_training_rows"]
            ),
            "model": dg.MetadataValue.path(str(data.layout.model(MODEL_NAME))),
        }
    )


@dg.asset_check(
    asset=domain_classifier,
    description="Test accuracy above chance: features that cannot separate classes make FID blind.",
)
def domain_classifier_above_chance(data: DataResource) -> dg.AssetCheckResult:
    import json

    from ops.eval.classifier import CONFIG_FILE, MODEL_NAME

    config = json.loads((data.layout.model(MODEL_NAME) / CONFIG_FILE).read_text())
    accuracy = float(config["summary"]["test_accuracy"])
    chance = 1.0 / max(1, int(config["num_classes"]))
    return dg.AssetCheckResult(
        passed=bool(accuracy > chance),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"test_accuracy": accuracy, "chance": chance},
    )
