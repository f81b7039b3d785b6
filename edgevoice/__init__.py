"""edgevoice: full-duplex on-device voice.

Importing the package is cheap: it loads neither torch nor onnxruntime. Export-side code lives
in ``edgevoice.export`` (needs the ``export`` extra); the runtime in ``edgevoice.runtime``.
"""

from edgevoice.errors import EdgevoiceError

__version__ = "0.1.0"

__all__ = ["EdgevoiceError", "__version__"]
