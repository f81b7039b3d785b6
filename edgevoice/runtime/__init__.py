"""The runtime: runs engine packages with numpy + onnxruntime/TensorRT only — never torch.

It learns a package's wiring from its manifest and its recipe's glue in ``runtime/pipelines``.
"""

from edgevoice.runtime.pipelines.vad import VadPipeline
from edgevoice.runtime.segments import SpeechSegment, VadOptions

__all__ = ["VadPipeline", "SpeechSegment", "VadOptions"]
