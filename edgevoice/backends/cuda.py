"""CUDA and TensorRT presence, probed without creating any TensorRT object.

Creating a TensorRT object (even a Logger in the lean runtime) on a machine without a GPU can
segfault, so the GPU check talks to the CUDA runtime directly: cuda-python's new module, its old
one, then libcudart through ctypes. Used by `edgevoice build`, the TensorRT runner and `doctor`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import importlib
from typing import Any, Callable

# cudaDeviceAttr values from the CUDA runtime headers (stable since CUDA 5).
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76

_CUDA_PYTHON_MODULES = ("cuda.bindings.runtime", "cuda.cudart")


def _cuda_python_runtimes() -> list[Any]:
    found = []
    for name in _CUDA_PYTHON_MODULES:
        try:
            found.append(importlib.import_module(name))
        except Exception:  # noqa: BLE001 - ImportError, or a deprecation shim that fails to load
            continue
    return found


@functools.lru_cache(maxsize=1)
def _cudart_library() -> ctypes.CDLL | None:
    found = ctypes.util.find_library("cudart")
    candidates = [found] if found else []
    candidates += ["libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"]
    candidates += sorted(glob.glob("/usr/local/cuda*/lib64/libcudart.so*"), reverse=True)
    for name in candidates:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _ok(err: Any) -> bool:
    # cuda-python returns enum members, ctypes plain ints; cudaSuccess is 0 in both.
    return int(getattr(err, "value", err)) == 0


def _first_answer(probes: list[Callable[[], Any]]) -> Any:
    """Result of the first probe that runs without raising; None when every probe fails."""
    for probe in probes:
        try:
            return probe()
        except Exception:  # noqa: BLE001 - missing library or symbol: try the next way
            continue
    return None


def _ctypes_device_count() -> int:
    lib = _cudart_library()
    if lib is None:
        raise OSError("libcudart not found")
    count = ctypes.c_int(0)
    return count.value if _ok(lib.cudaGetDeviceCount(ctypes.byref(count))) else 0


def cuda_device_count() -> int:
    """Number of CUDA devices, or 0 when there is no GPU, no driver or no CUDA runtime at all."""

    def via(runtime: Any) -> Callable[[], int]:
        def probe() -> int:
            err, count = runtime.cudaGetDeviceCount()
            return int(count) if _ok(err) else 0  # an error answer (no device/driver) is final

        return probe

    probes = [via(rt) for rt in _cuda_python_runtimes()] + [_ctypes_device_count]
    return int(_first_answer(probes) or 0)


def _ctypes_capability(device: int) -> str | None:
    lib = _cudart_library()
    if lib is None:
        raise OSError("libcudart not found")
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    if not _ok(lib.cudaDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, device)):
        return None
    if not _ok(lib.cudaDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, device)):
        return None
    return f"{major.value}.{minor.value}"


def _properties(runtime: Any, device: int) -> Any:
    err, prop = runtime.cudaGetDeviceProperties(device)
    if not _ok(err):
        raise RuntimeError(f"cudaGetDeviceProperties failed: {err}")
    return prop


def device_compute_capability(device: int = 0) -> str | None:
    """Compute capability as 'major.minor' (e.g. '8.7' on Orin), or None when unknown."""

    def via(runtime: Any) -> Callable[[], str]:
        return lambda: "{0.major}.{0.minor}".format(_properties(runtime, device))

    probes = [via(rt) for rt in _cuda_python_runtimes()] + [lambda: _ctypes_capability(device)]
    answer = _first_answer(probes)
    return answer


def device_name(device: int = 0) -> str | None:
    def via(runtime: Any) -> Callable[[], str]:
        def probe() -> str:
            name = _properties(runtime, device).name
            return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00")

        return probe

    # No ctypes probe: cudaDeviceProp's layout changes between CUDA versions.
    answer = _first_answer([via(rt) for rt in _cuda_python_runtimes()])
    return answer


def tensorrt_version() -> str | None:
    """TensorRT's version when it is importable (importing creates no TensorRT objects)."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:  # noqa: BLE001 - ImportError, or a broken install failing to load its .so
        return None
