"""Text prompts built from class labels: the one place where labels become words.

The template is configuration (``prompts.template`` in params.yaml); the default reads
"chest X-ray of a human chest, cardiomegaly". DreamBooth's instance prompt (a rare identifier
token before the class prompt) is built here too, for the baseline that trains on it and the
benchmark that samples with it.
"""

from __future__ import annotations

from collections.abc import Mapping

LABEL_FIELDS = ("species", "body_part", "modality", "disease")
DEFAULT_TEMPLATE = "{modality} of a {species} {body_part}, {disease}"
ARTICLES = ("a", "an", "the")


def build_prompt(labels: Mapping[str, str], template: str = DEFAULT_TEMPLATE) -> str:
    """Fill the template from a manifest row (or any mapping with the label fields)."""
    missing = [f for f in LABEL_FIELDS if f"{{{f}}}" in template and not labels.get(f)]
    if missing:
        raise ValueError(f"labels {missing} are missing for prompt template {template!r}")
    return template.format(**{f: str(labels.get(f, "")).strip() for f in LABEL_FIELDS})


def rare_token_prompt(prompt: str, identifier: str = "sks") -> str:
    """The instance prompt: "a <identifier> <class prompt>", e.g.
    "chest X-ray of a human chest, cardiomegaly" -> "a sks chest X-ray of a human chest, cardiomegaly".

    A leading article of the class prompt is dropped (no "a sks a ..."); a prompt that already
    holds the identifier is returned unchanged. "sks" is the paper's choice: a short token that
    is rare in text, so it carries little prior meaning to overwrite.
    """
    text = " ".join(prompt.split())
    if identifier in text.split():
        return text
    first, _, rest = text.partition(" ")
    if first.lower() in ARTICLES:
        text = rest
    return f"a {identifier} {text}".strip()
