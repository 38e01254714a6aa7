"""The feature extractor that ``benchmark.feature_extractor`` names: ``domain`` or ``inception``.

It sits above both :mod:`ops.eval.features` and :mod:`ops.eval.classifier`, so neither has to
know the other's loader (the two used to import each other).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ops.eval.features import FeatureExtractor, inception_extractor
from ops.layout import DataLayout


def load_extractor(
    name: str,
    layout: DataLayout,
    params: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> FeatureExtractor:
    """The extractor named in ``benchmark.feature_extractor`` (``domain`` | ``inception``)."""
    if name == "inception":
        weights = ((params or {}).get("benchmark") or {}).get("inception_weights")
        return inception_extractor(weights, device)
    if name == "domain":
        from ops.eval.classifier import feature_extractor, load_domain_classifier

        model, _ = load_domain_classifier(layout, device=device)
        return feature_extractor(model)
    raise ValueError(f"unknown feature extractor {name!r}; use 'domain' or 'inception'")
