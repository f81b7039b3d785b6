"""What this machine offers edgevoice: Python, torch, onnxruntime providers, CUDA, TensorRT, audio.

Versions come from package metadata so the report does not import torch (slow) to read one string.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import sys
from typing import Any


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime
    except ImportError:
        return {"version": None, "providers": []}
    return {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}


def _audio() -> dict[str, Any]:
    from edgevoice.audio.devices import list_devices
    from edgevoice.errors import EdgevoiceError

    try:
        devices = list_devices()
    except EdgevoiceError as exc:
        return {"available": False, "detail": str(exc), "inputs": 0, "outputs": 0}
    return {
        "available": True,
        "detail": f"sounddevice {_version('sounddevice')}",
        "inputs": sum(d["max_input_channels"] > 0 for d in devices),
        "outputs": sum(d["max_output_channels"] > 0 for d in devices),
    }


def system_report() -> dict[str, Any]:
    """Everything `edgevoice doctor` shows, as plain data."""
    from edgevoice import __version__
    from edgevoice.backends.cuda import cuda_device_count, device_compute_capability, tensorrt_version

    gpus = cuda_device_count()
    return {
        "edgevoice": __version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": _version("torch"),
        "onnx": _version("onnx"),
        "onnxruntime": _onnxruntime(),
        "cuda_devices": gpus,
        "compute_capability": device_compute_capability() if gpus else None,
        "tensorrt": tensorrt_version(),
        "audio": _audio(),
        "espeak_ng": shutil.which("espeak-ng"),
    }
