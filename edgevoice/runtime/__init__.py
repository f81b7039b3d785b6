"""The runtime: runs engine packages with numpy + onnxruntime/TensorRT only — never torch.

It learns a package's wiring from its manifest and its family's glue in its own folder (``runtime/cascade``, ``runtime/freeze_omni``).
"""

from edgevoice.runtime.segments import SpeechSegment, VadOptions
from edgevoice.runtime.vad import VadPipeline

__all__ = ["VadPipeline", "SpeechSegment", "VadOptions"]
