"""edgevoice: full-duplex on-device voice.

Importing the package is cheap: it loads neither torch nor onnxruntime. Export-side code lives
in ``edgevoice.export`` (needs the ``export`` extra); the runtime in ``edgevoice.runtime``.
"""

from edgevoice.errors import EdgevoiceError

__version__ = "0.1.0"

__all__ = ["Agent", "EdgevoiceError", "__version__"]


def __getattr__(name: str):
    # Agent pulls in onnxruntime and the audio stack; load it on first use, not on `import edgevoice`.
    if name == "Agent":
        from edgevoice.runtime.agent import Agent

        return Agent
    raise AttributeError(f"module 'edgevoice' has no attribute {name!r}")
