"""Export side: PyTorch modules to ONNX engine packages, TensorRT builds, and the checks between.

Needs the ``export`` extra (torch, onnx, onnxruntime); ``build_package`` needs TensorRT and a GPU.
"""

from edgevoice.export.build import build_package
from edgevoice.export.package import export_package

__all__ = ["export_package", "build_package"]
