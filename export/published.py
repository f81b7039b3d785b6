"""Memory budgets of a model's published sizes against every hw/ target, from meta-shaped graphs.

A recipe exported from small or random weights still says what its real sizes need: each
published size's components (built on the meta device, so nothing is allocated) are measured once
by ``edgevoice.export.budget`` and compared with every target profile that runs the precision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgevoice.export.budget import budget_for, measure

from edgevoice.recipes.base import RecipeComponent
from edgevoice.targets import list_targets, load_target


def budgets_per_target(models: Mapping[str, Sequence[RecipeComponent]], precision: str = "fp16") -> dict[str, Any]:
    """{model: {precision, weight_bytes, targets: {target: {fits, needed_bytes, available_bytes}}}}."""
    out: dict[str, Any] = {}
    for model, components in models.items():
        measured = measure(components, precision)
        rows = {}
        for name in list_targets():
            target = load_target(name)
            if target.supports(precision):
                budget = budget_for(measured, target, precision)
                rows[name] = {"fits": budget.fits, "needed_bytes": budget.needed_bytes,
                              "available_bytes": budget.available_bytes}
        out[model] = {"precision": precision, "weight_bytes": sum(m.weight_bytes for m in measured), "targets": rows}
    return out
