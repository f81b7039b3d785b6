"""Export-side recipes: which torch components make up a model, with which weights (torch lives here).

``load_recipe(name)`` builds a recipe's components with their real weights.
"""

from __future__ import annotations

import importlib

from edgevoice.errors import EdgevoiceError

# model name -> module with a ``recipe(sample_rate=...)`` function
RECIPES = {
    "cascade": "edgevoice.recipes.cascade.recipe",
    "silero-vad": "edgevoice.recipes.silero_vad",
    "freeze-omni": "edgevoice.recipes.freeze_omni.recipe",
    "tiny": "edgevoice.recipes.tiny",
    "vocalnet": "edgevoice.recipes.vocalnet.recipe",
    "vocalnet-tiny": "edgevoice.recipes.vocalnet.tiny",
}


def expected_components(name: str) -> tuple[str, ...] | None:
    """The components a recipe's package holds, where the recipe fixes them (``COMPONENTS``).

    Lets export see that a package made by an older recipe lacks a component added since, without
    loading any weights; None where the set depends on the weights (freeze-omni).
    """
    if name not in RECIPES:
        return None
    return getattr(importlib.import_module(RECIPES[name]), "COMPONENTS", None)


def optional_components(name: str) -> tuple[str, ...]:
    """Components a recipe exports that an older package may lack and still be current (``OPTIONAL_COMPONENTS``)."""
    if name not in RECIPES:
        return ()
    return getattr(importlib.import_module(RECIPES[name]), "OPTIONAL_COMPONENTS", ())


def check_model(name: str) -> None:
    """One line naming the known models when ``name`` is not one (cheap: loads nothing)."""
    if name not in RECIPES:
        raise EdgevoiceError(f"unknown model '{name}'; known models: {', '.join(sorted(RECIPES))}")


def load_recipe(name: str, **options):
    check_model(name)
    return importlib.import_module(RECIPES[name]).recipe(**options)
