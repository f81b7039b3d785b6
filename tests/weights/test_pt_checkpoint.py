"""Safe .pt loading: tensors come back, a pickle that would run code is refused before it runs."""

from __future__ import annotations

import os

import pytest
import torch

from edgevoice.errors import EdgevoiceError
from edgevoice.weights.pt_checkpoint import load_pt, load_pt_tensors, tensor_dict


class _RunsCodeWhenUnpickled:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_plain_state_dict_round_trips(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"model": {"a": torch.arange(3.0), "b": torch.ones(2, dtype=torch.bfloat16)}}, path)
    state = load_pt_tensors(path, key="model")
    assert sorted(state) == ["a", "b"] and state["b"].dtype == torch.bfloat16
    assert torch.equal(state["a"], torch.arange(3.0))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "payload": _RunsCodeWhenUnpickled(str(marker))}, path)
    with pytest.raises(EdgevoiceError, match="refusing to load .*system"):
        load_pt(path)
    assert not marker.exists()


def test_not_a_checkpoint_and_missing_file_are_user_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(EdgevoiceError):
        load_pt(junk)
    with pytest.raises(EdgevoiceError, match="does not exist"):
        load_pt(tmp_path / "absent.pt")


def test_tensor_dict_names_what_is_wrong():
    with pytest.raises(EdgevoiceError, match="no entry 'model'"):
        tensor_dict({"generator": {}}, "x.pt", key="model")
    with pytest.raises(EdgevoiceError, match="not tensors: \\['n'\\]"):
        tensor_dict({"n": 3, "w": torch.zeros(1)}, "x.pt")
