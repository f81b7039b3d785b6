"""VocalNet packages exported once per test session: each fixture set's folders, and vocalnet-tiny."""

from __future__ import annotations

import pytest
from edgevoice.export import export_package
from vn_fixtures import fixture_params, load_set


@pytest.fixture(scope="session", params=fixture_params())
def fixture_export(request, tmp_path_factory):
    """(fixture set, manifest) of `export --model vocalnet` on the set's published-layout folders."""
    s = load_set(request.param)
    out = tmp_path_factory.mktemp(f"vn-{s.root.name}")
    manifest = export_package(model="vocalnet", target="cpu", out=out, weights=s.vocalnet_dir,
                              cosyvoice=s.cosyvoice_dir, whisper=s.whisper_dir)
    return s, manifest


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory):
    """The vocalnet-tiny package (what CI exports and talks to)."""
    out = tmp_path_factory.mktemp("vn-tiny")
    return export_package(model="vocalnet-tiny", target="cpu", out=out)
