"""Safe reading of PyTorch ``.pt`` checkpoints (``torch.save`` files) without running their code.

A ``.pt`` file is a pickle. Unpickling an arbitrary pickle can execute any Python the file's
author chose, so we only ever read them with ``torch.load(weights_only=True)``: its restricted
unpickler accepts tensors, plain containers (dict, OrderedDict, list, tuple) and numbers, and
refuses everything else. A refused file is reported as an `EdgevoiceError`; we never fall back
to the unrestricted loader.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from edgevoice.errors import EdgevoiceError


def load_pt(path: Path) -> Any:
    """The object stored in ``path``, loaded on CPU with the restricted (weights-only) unpickler."""
    path = Path(path)
    if not path.is_file():
        raise EdgevoiceError(f"checkpoint {path} does not exist; check the checkpoint directory")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise EdgevoiceError(
            f"refusing to load {path}: it is not a plain weights file ({_refusal_reason(exc)}); "
            "only tensors and plain containers are accepted, re-save it with "
            "torch.save(model.state_dict(), path) from a trusted copy"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise EdgevoiceError(f"{path} is not a readable torch.save file ({exc}); download it again") from exc


def _refusal_reason(exc: pickle.UnpicklingError) -> str:
    """The line of torch's refusal that names what was refused, without its advice to disable the check."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line.startswith(("Trying to load", "Unsupported")):
            return line.rstrip(".")
    return "the restricted unpickler refused it"


def tensor_dict(obj: Any, source: str, key: str | None = None) -> dict[str, torch.Tensor]:
    """``obj`` (or ``obj[key]``) as a flat name -> tensor dict; anything else is an error.

    ``key`` picks one sub-dict of a checkpoint that stores several (``{'model': ...}``,
    ``{'generator': ..., 'quantizer': ...}``); the rest of ``obj`` is ignored by the caller's choice.
    """
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            have = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise EdgevoiceError(f"{source} has no entry '{key}' (it has {have}); is it the right checkpoint?")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise EdgevoiceError(f"{source} holds a {type(obj).__name__}, not a dict of tensors; is it the right checkpoint?")
    not_tensors = sorted(str(name) for name, value in obj.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise EdgevoiceError(f"{source} has entries that are not tensors: {not_tensors[:5]}; is it the right checkpoint?")
    return {str(name): value for name, value in obj.items()}


def load_pt_tensors(path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Shortcut: the flat tensor dict stored in ``path`` (or under ``key`` in it)."""
    return tensor_dict(load_pt(path), str(path), key)
