"""CUDA probing without TensorRT: answers on machines with and without a GPU, never crashes."""

from __future__ import annotations

from edgevoice.backends import cuda


def test_cuda_device_count_is_an_int():
    count = cuda.cuda_device_count()
    assert isinstance(count, int) and count >= 0


def test_cuda_probes_fall_back_to_zero(monkeypatch):
    monkeypatch.setattr(cuda, "_CUDA_PYTHON_MODULES", ("no_such_cuda_module",))
    monkeypatch.setattr(cuda, "_cudart_library", lambda: None)
    assert cuda.cuda_device_count() == 0
    assert cuda.device_compute_capability() is None
