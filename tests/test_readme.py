"""The README's two setup commands are what CI runs, and the main one works as written."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import REPO


def readme_block(name: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- {name} -->\n```sh\n(.*?)\n```\n<!-- /{name} -->", text, re.S)
    assert match, f"README.md has no ```sh block between <!-- {name} --> markers"
    return match.group(1).strip()


def test_ci_runs_the_readme_commands():
    ci = (REPO / ".ci" / "run").read_text()
    assert "readme_block main-command" in ci and "readme_block test-command" in ci
    assert "pytest" in readme_block("test-command")


@pytest.mark.slow
def test_main_command_runs_as_written():
    # Idempotent by design: on a set-up checkout the venv and packages are already there.
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block("main-command")],
                            cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"you: .*capital.*France", result.stdout), result.stdout
    assert re.search(r"agent: .*Paris", result.stdout), result.stdout
    assert (REPO / "reply.wav").is_file()
