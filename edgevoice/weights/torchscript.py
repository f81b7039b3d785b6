"""Read parameters out of a TorchScript archive (e.g. Silero VAD's ``silero_vad.jit``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from edgevoice.errors import EdgevoiceError


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """torch.jit.load without its deprecation warning: reading upstream archives is all we do with it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu")


def read_torchscript_state(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The archive's state_dict entries under ``prefix``, with the prefix stripped.

    TorchScript archives hold code for TorchScript's own interpreter, not Python pickles of
    arbitrary classes, so loading one does not run untrusted Python.
    """
    try:
        scripted = load_torchscript(path)
    except (RuntimeError, ValueError) as exc:
        raise EdgevoiceError(f"{path} is not a readable TorchScript archive ({exc}); reinstall its package") from exc
    state = {k[len(prefix) :]: v.detach().clone() for k, v in scripted.state_dict().items() if k.startswith(prefix)}
    if not state:
        raise EdgevoiceError(f"{path} holds no tensors under '{prefix}'; is it the expected model?")
    return state
