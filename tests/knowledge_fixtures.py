"""The cascade package plus the knowledge memory's ``embed`` component, without re-exporting the cascade.

``export_embed`` writes only the ``embed`` graph (and its tokenizer) into a folder;
``with_embed`` makes a package folder whose other files are links to an exported cascade package,
with a manifest listing both (hashes recorded as they are). The cascade's 1.3 GB are never copied.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgevoice.manifest import (
    MANIFEST_NAME,
    Manifest,
    file_record,
    read_manifest,
    write_manifest,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KIOSK = EXAMPLES / "kiosk.md"
# Questions about examples/kiosk.md: (question, heading of the passage that answers it, the fact an
# answer must contain — any of the spellings). Facts a small model cannot guess: odd hours, names, codes.
KIOSK_QUESTIONS = (
    ("What time does the kiosk open in the morning?", "Opening hours", ("7:45", "7.45", "seven forty-five")),
    ("Where are the toilets?", "Toilets", ("lower level", "escalator", "bakery")),
    ("What is the name of the Wi-Fi network?", "Wi-Fi", ("riversideguest", "riverside guest")),
    ("I lost my umbrella. Where is lost and found?", "Lost and found", ("green desk", "ticket machines")),
    ("Where can I park my bicycle?", "Bike parking", ("north exit", "covered rack")),
    ("How much does a large luggage locker cost?", "Luggage lockers", ("7 euros", "seven euros", "€7")),
    ("Where do I find a taxi?", "Taxis", ("south exit", "tram")),
    ("Is there a pharmacy near the station?", "Pharmacy", ("mercer", "canal street")),
)


def export_embed(out: Path, precision: str = "fp32"):
    """Export the ``embed`` component into ``out``; returns its manifest entry (files copied)."""
    from edgevoice.export.package import _copy_files
    from edgevoice.export.to_onnx import export_onnx, with_precision

    from edgevoice.recipes.cascade.embed import embed_component

    out.mkdir(parents=True, exist_ok=True)
    component = embed_component()
    entry = export_onnx(with_precision(component, precision), out / "embed.onnx", precision, max_batch=4)
    return replace(entry, files=_copy_files(component, out)), component


def with_embed(cascade: Manifest, embed_dir: Path, entry, out: Path) -> Manifest:
    """A package in ``out``: ``cascade``'s files as links, the embed component's files as links, one manifest."""
    out.mkdir(parents=True, exist_ok=True)
    files = dict(cascade.files)
    for name in files:
        _link(cascade.directory / name, out / name)
    for name in (entry.onnx, *entry.files):
        _link(embed_dir / name, out / name)
        files[name] = file_record(embed_dir / name)
    manifest = replace(cascade, components={**cascade.components, entry.name: entry}, files=files, directory=out)
    write_manifest(manifest)
    return read_manifest(out, verify_files=False)


def without_embed(package: Manifest, out: Path) -> Manifest:
    """The same package with its ``embed`` component left out (what older exports look like)."""
    out.mkdir(parents=True, exist_ok=True)
    components = {k: v for k, v in package.components.items() if k != "embed"}
    kept = {name for c in components.values() for name in (c.onnx, *c.files)}
    files = {name: record for name, record in package.files.items()
             if name in kept or not name.startswith("embed")}
    for name in files:
        _link(package.directory / name, out / name)
    manifest = replace(package, components=components, files=files, directory=out)
    write_manifest(manifest)
    return read_manifest(out, verify_files=False)


def _link(source: Path, target: Path) -> None:
    if target.name == MANIFEST_NAME:
        return
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(source.resolve())


def embed_package(out: Path) -> Manifest:
    """A package holding only the ``embed`` component (enough for the knowledge memory on its own)."""
    from edgevoice.manifest import SCHEMA_VERSION

    entry, _ = export_embed(out)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, edgevoice_version="test", recipe="cascade", config={}, target={"name": "cpu"},
        export_command="pytest (embed only)", components={entry.name: entry},
        files={name: file_record(out / name) for name in (entry.onnx, *entry.files)}, directory=out,
    )
    write_manifest(manifest)
    return read_manifest(out)
