"""Strict state-dict loading: every tensor used exactly once, shapes checked, errors name keys."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from edgevoice.errors import EdgevoiceError


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``module``; any missing, unexpected or mis-shaped tensor is an error.

    Persistent buffers count as weights (e.g. a fixed STFT basis shipped with the model).
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise EdgevoiceError(
            f"weights in {source} do not fit {type(module).__name__}: "
            f"missing {missing or 'none'}, unexpected {unexpected or 'none'}; "
            "is this the right model file?"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise EdgevoiceError(
                f"tensor '{name}' in {source} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected[name].shape)}; is this the right model size?"
            )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
