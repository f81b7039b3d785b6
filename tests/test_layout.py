"""The layout and import rules of DESIGN.md section 3, checked on the source with ``ast``.

Each rule is its own test; a failure lists every offending ``file:line  import``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("edgevoice", "export", "cli")


def python_files(*roots: str) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        path = REPO / root
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """Every absolute import in ``path``: (line, module name, inside a function?).

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (``c`` may be a submodule).
    """
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, in_function))
            found.extend((node.lineno, f"{node.module}.{alias.name}", in_function) for alias in node.names)
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(roots: tuple[str, ...], forbidden: tuple[str, ...], top_level_only: bool = False) -> list[str]:
    lines = set()
    for path in python_files(*roots):
        for lineno, name, in_function in imports(path):
            if matches(name, forbidden) and not (top_level_only and in_function):
                lines.add(f"{path.relative_to(REPO)}:{lineno}  {name}")
    return sorted(lines)


def assert_none(found: list[str], rule: str) -> None:
    assert not found, f"{rule}:\n  " + "\n  ".join(found)


# --- import rules ----------------------------------------------------------------------------

def test_library_never_imports_export_or_cli():
    found = violations(("edgevoice",), ("edgevoice.export", "edgevoice.cli"))
    assert_none(found, "edgevoice/ must not import edgevoice.export or edgevoice.cli")


def test_models_and_modules_never_import_runtime_audio_backends():
    found = violations(
        ("edgevoice/models", "edgevoice/modules"),
        ("edgevoice.runtime", "edgevoice.audio", "edgevoice.backends"),
    )
    assert_none(found, "edgevoice/models and edgevoice/modules must not import runtime, audio or backends")


def test_runtime_never_imports_export_side():
    found = violations(
        ("edgevoice/runtime",),
        ("edgevoice.recipes", "edgevoice.models", "edgevoice.modules", "edgevoice.streaming",
         "edgevoice.weights", "torch"),
    )
    assert_none(found, "edgevoice/runtime must not import recipes, models, modules, streaming, weights or torch")


def test_runtime_path_never_imports_torch():
    roots = (
        "edgevoice/runtime", "edgevoice/backends", "edgevoice/audio", "edgevoice/manifest.py",
        "edgevoice/targets.py", "edgevoice/compare.py", "edgevoice/errors.py",
    )
    # The torch backend (DESIGN section 6) is the one backends/ file allowed torch, inside its runner only.
    torch_backend = "edgevoice/backends/torch.py"
    found = [line for line in violations(roots, ("torch",)) if not line.startswith(torch_backend)]
    assert_none(found, "the runtime path must not import torch")
    assert_none(violations((torch_backend,), ("torch",), top_level_only=True), "the torch backend imports torch lazily")


def test_heavy_optional_packages_are_imported_lazily():
    found = violations(("edgevoice",), ("tensorrt", "onnxruntime", "sounddevice", "pyaudio"), top_level_only=True)
    assert_none(found, "tensorrt/onnxruntime/sounddevice/pyaudio may only be imported inside functions")


def test_no_top_level_export_or_cli_package():
    found = violations(SOURCE_ROOTS + ("tests",), ("export", "cli"))
    assert_none(found, "import edgevoice.export / edgevoice.cli, never top-level export / cli")


# --- the runtime in a fresh interpreter ------------------------------------------------------

def run_fresh(code: str, cwd: Path = REPO) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_runtime_does_not_load_torch():
    run_fresh("""
        import sys
        import edgevoice.runtime
        import edgevoice.backends.ort
        loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))
        assert not loaded, loaded
    """)


@pytest.fixture(scope="module")
def vad_package(tmp_path_factory) -> Path:
    from edgevoice.export import export_package

    out = tmp_path_factory.mktemp("silero-vad-cpu")
    export_package(model="silero-vad", target="cpu", out=out)
    return out


def test_running_a_package_does_not_load_torch(vad_package):
    run_fresh(f"""
        import sys
        import numpy as np
        from edgevoice.runtime import VadPipeline
        p = VadPipeline({str(vad_package)!r})
        probs = p.probabilities(np.zeros(16000, np.float32), 16000)
        assert len(probs) > 0
        loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))
        assert not loaded, loaded
    """)


# --- the tree itself -------------------------------------------------------------------------

EXPECTED_PATHS = [
    "pyproject.toml", "README.md", ".ci/run",
    "edgevoice/errors.py", "edgevoice/streaming.py", "edgevoice/manifest.py", "edgevoice/targets.py",
    "edgevoice/modules", "edgevoice/models", "edgevoice/weights", "edgevoice/recipes",
    "edgevoice/backends", "edgevoice/audio", "edgevoice/runtime",
    "export", "cli", "hw", "engines/README.md", "tests",
]


@pytest.mark.parametrize("relative", EXPECTED_PATHS)
def test_design_layout_exists(relative):
    assert (REPO / relative).exists(), f"{relative} (DESIGN.md section 3) is missing"


# A family is one folder per layer (DESIGN.md section 3): these are the rooms a newcomer looks in.
FAMILY_ROOMS = [
    "edgevoice/models/whisper", "edgevoice/models/freeze_omni",
    "edgevoice/weights/whisper", "edgevoice/weights/llm", "edgevoice/weights/freeze_omni",
    "edgevoice/recipes/cascade", "edgevoice/recipes/freeze_omni",
    "edgevoice/runtime/cascade", "edgevoice/runtime/freeze_omni",
]
RUNTIME_FAMILIES = ("cascade", "freeze_omni")
# File-name prefixes that would say a family instead of a folder saying it.
FAMILY_PREFIXES = ("fo_", "freeze_omni_", "vn_", "vocalnet_", "cascade_", "whisper_", "kokoro_")
LAYERS = ("edgevoice/models", "edgevoice/weights", "edgevoice/recipes", "edgevoice/runtime")


@pytest.mark.parametrize("relative", FAMILY_ROOMS)
def test_family_room_is_a_package(relative):
    assert (REPO / relative / "__init__.py").is_file(), f"{relative}/__init__.py is missing"


def test_no_family_prefix_in_layer_file_names():
    # A family's files sit in its folder (runtime/freeze_omni/session.py), never as prefixed
    # siblings (runtime/fo_session.py). Inside a family folder a file may repeat its parts' words.
    found = []
    for layer in LAYERS:
        for path in python_files(layer):
            if path.name.startswith(FAMILY_PREFIXES) and path.parent == REPO / layer:
                found.append(str(path.relative_to(REPO)))
    assert_none(found, "a family's files go in its folder, not behind a file-name prefix")


@pytest.mark.parametrize("family", RUNTIME_FAMILIES)
def test_runtime_families_never_import_each_other(family):
    others = tuple(f"edgevoice.runtime.{other}" for other in RUNTIME_FAMILIES if other != family)
    found = violations((f"edgevoice/runtime/{family}",), others)
    assert_none(found, f"runtime/{family} must not import another family's runtime (share through runtime/)")


def test_shared_runtime_imports_no_family_but_the_agent():
    # What every recipe shares lives at the top of runtime/; only the Agent picks a family's
    # session from the manifest's recipe.
    families = tuple(f"edgevoice.runtime.{family}" for family in RUNTIME_FAMILIES)
    shared = [p for p in python_files("edgevoice/runtime") if p.parent == REPO / "edgevoice/runtime"]
    found = [line for line in violations(tuple(str(p.relative_to(REPO)) for p in shared), families)
             if not line.startswith("edgevoice/runtime/agent.py")]
    assert_none(found, "shared runtime modules must not depend on one family")


def test_engines_folder_tracks_only_its_readme():
    tracked = subprocess.run(
        ["git", "ls-files", "engines"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked == ["engines/README.md"], tracked


def test_no_source_file_exceeds_500_lines():
    too_long = []
    for path in python_files(*SOURCE_ROOTS):
        count = len(path.read_text().splitlines())
        if count > 500:
            too_long.append(f"{path.relative_to(REPO)}: {count} lines")
    assert_none(too_long, "source files must stay under 500 lines")
