"""The built wheel: export/, cli/ and hw/ install as edgevoice.export / edgevoice.cli / edgevoice.hw,
and the base install (no torch, no onnxruntime) imports, runs the CLI and reads target profiles.

Needs network: the build fetches setuptools, and the clean venv installs the base dependencies.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy of the working tree (tracked + untracked, minus ignored files), so a stale
    # build/ folder in the repo cannot leak old files into the wheel.
    source = tmp_path_factory.mktemp("source")
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist)], cwd=source)
    (built,) = dist.glob("edgevoice-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A clean venv (no system site-packages) with only the wheel and its base dependencies."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", str(root)], cwd=root)
    run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=root)
    return root


def venv_python(venv: Path, code: str) -> str:
    # cwd is the venv's folder, not the repo, so only the installed package is importable.
    return run([str(venv / "bin" / "python"), "-c", textwrap.dedent(code)], cwd=venv).stdout


def test_wheel_maps_export_cli_hw_into_edgevoice(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "edgevoice/export/__init__.py",
        "edgevoice/cli/main.py",
        "edgevoice/hw/cpu.json",
        "edgevoice/export/data/trt_onnx_ops.json",
    ):
        assert expected in names, f"{expected} missing from {wheel.name}"
    stray = [n for n in names if n.split("/")[0] in ("export", "cli", "hw", "tests")]
    assert not stray, f"top-level entries in the wheel: {stray}"


def test_wheel_holds_every_package_folder_and_the_kiosk_page(wheel):
    # pyproject lists packages by hand: a new family folder left out of it imports from the repo
    # and is missing from an installed edgevoice.
    names = set(zipfile.ZipFile(wheel).namelist())
    folders = [p.parent.relative_to(REPO).as_posix() for p in (REPO / "edgevoice").rglob("__init__.py")]
    missing = [f for f in folders if f"{f}/__init__.py" not in names]
    assert not missing, f"package folders not in the wheel (add them to pyproject's packages): {missing}"
    assert "edgevoice/serve/web/index.html" in names and "edgevoice/serve/web/kiosk.js" in names


def test_clean_venv_has_no_torch_or_onnxruntime(venv):
    # The checks below mean something only if the heavy extras are really absent.
    venv_python(venv, """
        import importlib.util
        for name in ("torch", "onnxruntime", "tensorrt"):
            assert importlib.util.find_spec(name) is None, name
    """)


def test_installed_package_imports_without_torch(venv):
    site = venv_python(venv, "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    venv_python(venv, f"""
        import importlib.util
        import sys
        from pathlib import Path

        import edgevoice, edgevoice.runtime, edgevoice.cli, edgevoice.cli.main

        site = Path({site!r}).resolve()
        for name in ("edgevoice", "edgevoice.runtime", "edgevoice.cli"):
            origin = Path(sys.modules[name].__file__).resolve()
            assert origin.is_relative_to(site), (name, origin)
        # edgevoice.export needs torch to import; the base install must still ship it.
        spec = importlib.util.find_spec("edgevoice.export")
        assert spec is not None and Path(spec.origin).resolve().is_relative_to(site), spec
        assert "torch" not in sys.modules
    """)


def test_installed_package_reads_target_profiles(venv):
    out = venv_python(venv, """
        from edgevoice.targets import load_target
        print(load_target('jetson-orin'))
    """)
    assert out.strip()


def test_console_script_lists_commands(venv):
    help_text = run([str(venv / "bin" / "edgevoice"), "--help"], cwd=venv).stdout
    # Each command is the first word of its row in the Commands panel: "│ export   Export ...".
    first_words = {line.strip("│ ").split(" ")[0] for line in help_text.splitlines()}
    for command in ("export", "build", "inspect", "vad", "doctor", "devices"):
        assert command in first_words, f"'{command}' not listed by `edgevoice --help`:\n{help_text}"


def test_runtime_runs_on_python_3_10(wheel, tmp_path):
    """JetPack 6 ships Python 3.10: the wheel installs there and runs a package without torch."""
    python310 = find_python310()
    if python310 is None:
        pytest.skip("no working python3.10 on this machine (PATH or ~/.pyenv/versions)")
    from edgevoice.export import export_package

    package = export_package(model="silero-vad", target="jetson-orin", out=tmp_path / "pkg").directory
    root = tmp_path / "venv310"
    run([python310, "-m", "venv", str(root)], cwd=tmp_path)
    run([str(root / "bin" / "pip"), "install", "-q", str(wheel), "onnxruntime"], cwd=tmp_path)
    out = run([str(root / "bin" / "python"), "-c", textwrap.dedent(f"""
        import sys
        import numpy as np
        from edgevoice.runtime import VadPipeline
        probs = VadPipeline({str(package)!r}).probabilities(np.zeros(16000, np.float32), 16000)
        assert 'torch' not in sys.modules
        print(sys.version_info[:2], probs.shape)
    """)], cwd=root).stdout
    assert "(3, 10) (32,)" in out


def find_python310() -> str | None:
    # A pyenv shim answers for every version but runs only the selected one: try each candidate.
    candidates = [shutil.which("python3.10")] + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "import venv"], capture_output=True).returncode == 0:
            return candidate
    return None
