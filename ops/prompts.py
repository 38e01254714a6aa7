"""Text prompts built from class labels: the one place where labels become words.

The template is configuration (``prompts.template`` in params.yaml); the default reads
"chest X-ray of a human chest, cardiomegaly".
"""

from __future__ import annotations

from collections.abc import Mapping

LABEL_FIELDS = ("species", "body_part", "modality", "disease")
DEFAULT_TEMPLATE = "{modality} of a {species} {body_part}, {disease}"


def build_prompt(labels: Mapping[str, str], template: str = DEFAULT_TEMPLATE) -> str:
    """Fill the template from a manifest row (or any mapping with the label fields)."""
    missing = [f for f in LABEL_FIELDS if f"{{{f}}}" in template and not labels.get(f)]
    if missing:
        raise ValueError(f"labels {missing} are missing for prompt template {template!r}")
    return template.format(**{f: str(labels.get(f, "")).strip() for f in LABEL_FIELDS})
