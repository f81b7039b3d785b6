"""The engine package: a directory with manifest.json, one ONNX per component, and build recipes.

``export`` writes it, ``build`` adds TensorRT engines, ``inspect``/``talk``/``bench`` read it.
Loading verifies it: schema version, the sha256 and size of every file it lists, and the
manifest's own hash, so one changed byte anywhere makes the load fail with a message that names
the file and the command that recreates it. Engine files are further checked against the
TensorRT version and GPU compute capability of the machine (``check_engine``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from edgevoice.errors import EdgevoiceError, PackageError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
_SELF_HASH_KEY = "manifest_sha256"
_HASH_PLACEHOLDER = "0" * 64


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. String dims are named dynamic dims (see ``dynamic_dims``)."""

    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "int64" ...
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorSpec":
        return cls(name=d["name"], dtype=d["dtype"], shape=tuple(d["shape"]))


@dataclass(frozen=True)
class DimRange:
    """Range of a dynamic dim; TensorRT optimization profiles take min/opt/max from it."""

    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class EngineInfo:
    """A TensorRT engine built on the target by ``edgevoice build``."""

    file: str  # relative to the package
    tensorrt_version: str
    compute_capability: str  # e.g. "8.7"
    device_name: str
    build_flags: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Component:
    """One exported component: its graph file, I/O contract, state wiring and provenance."""

    name: str
    onnx: str  # file name relative to the package
    opset: int
    precision: str  # "fp32" | "fp16": baked into the graph
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_dims: dict[str, DimRange]
    state: dict[str, str]  # output name -> the input it feeds on the next step
    initial_state: dict[str, str]  # input name -> "zeros"
    stream: dict[str, Any]  # frame facts, e.g. {"chunk_samples": 512, "sample_rate": 16000}
    license: str
    files: tuple[str, ...] = ()  # data files the component needs at run time (tokenizers, phoneme maps)
    parity: dict[str, float] = field(default_factory=dict)  # output -> max abs error torch vs onnxruntime
    # TensorRT version -> one line of the static op check vs that version's ONNX parser support list
    # (export/data/trt_onnx_ops.json), not a parse by TensorRT; the key keeps its name for old packages.
    trt_check: dict[str, str] = field(default_factory=dict)
    engine: EngineInfo | None = None

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.name)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.name)

    @property
    def state_inputs(self) -> tuple[str, ...]:
        return tuple(self.state.values())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Component":
        d = dict(d)
        d["inputs"] = tuple(TensorSpec.from_dict(t) for t in d["inputs"])
        d["outputs"] = tuple(TensorSpec.from_dict(t) for t in d["outputs"])
        d["dynamic_dims"] = {k: DimRange(**v) for k, v in d["dynamic_dims"].items()}
        d["engine"] = EngineInfo(**d["engine"]) if d.get("engine") else None
        d["files"] = tuple(d.get("files", ()))
        return cls(**d)


@dataclass(frozen=True)
class Manifest:
    """What manifest.json says, after verification. ``directory`` is where the package lives."""

    schema_version: int
    edgevoice_version: str
    recipe: str
    config: dict[str, Any]
    target: dict[str, Any]  # the target profile the package was exported for
    export_command: str  # the command that recreates this package (named in every error)
    components: dict[str, Component]
    files: dict[str, dict[str, Any]]  # relative path -> {"sha256": ..., "bytes": ...}
    directory: Path = Path(".")

    def component(self, name: str) -> Component:
        if name not in self.components:
            raise PackageError(
                f"{self.directory / MANIFEST_NAME}: the package has no component '{name}' "
                f"(it has: {', '.join(self.components) or 'none'}); re-run "
                f"`{recreate_command(self.export_command, self.recipe, self.directory)}`"
            )
        return self.components[name]

    def path(self, relative: str) -> Path:
        return self.directory / relative

    @property
    def sessions_held(self) -> int | None:
        """Conversations the target's memory holds at once with the built engines (``edgevoice build``
        records it per engine); None before a build, or for engines built before it was recorded."""
        held = [c.engine.build_flags.get("sessions_held") for c in self.components.values() if c.engine]
        counted = [h for h in held if isinstance(h, int)]
        return min(counted) if counted else None

    def require_components(self, names: Iterable[str]) -> None:
        for name in names:
            self.component(name)

    def require_recipe(self, recipes: Iterable[str], config_keys: Iterable[str], components: Iterable[str],
                       export_example: str) -> None:
        """Refuse a package of another recipe, or one whose config or components a runtime needs are
        missing (exported by an older edgevoice), in one line that says what to run."""
        recipes = tuple(recipes)
        if self.recipe not in recipes:
            raise EdgevoiceError(f"the package holds recipe '{self.recipe}', not one of {', '.join(recipes)}; "
                                 f"export one with `{export_example}`")
        missing = [key for key in config_keys if key not in self.config]
        if missing:
            raise EdgevoiceError(f"{self.directory}: the manifest config lacks {', '.join(missing)}; "
                                 f"re-run `{self.export_command}` with this edgevoice")
        self.require_components(components)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description of the verified package."""
        data = asdict(self)
        data["directory"] = str(self.directory)
        return data

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("directory")
        data[_SELF_HASH_KEY] = _HASH_PLACEHOLDER
        return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(manifest: Manifest) -> Path:
    """Write manifest.json with its own hash embedded (computed over the bytes with a placeholder)."""
    text = manifest.to_json()
    digest = hashlib.sha256(text.encode()).hexdigest()
    path = manifest.directory / MANIFEST_NAME
    path.write_text(text.replace(_HASH_PLACEHOLDER, digest, 1))
    return path


def read_manifest(directory: str | Path, recipe: str | None = None, verify_files: bool = True) -> Manifest:
    """Load and verify a package. ``recipe`` (if given) must match the package's recipe."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise PackageError(
            f"{path} not found: {directory} is not an engine package; create one with "
            f"`edgevoice export --model silero-vad --target cpu --out {directory}`"
        )
    raw = path.read_bytes()
    data = _parse(raw, path)
    fix = recreate_command(data.get("export_command"), data.get("recipe"), directory)
    _check_self_hash(raw, data, path, fix)
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise PackageError(
            f"{path}: schema version {version!r} is not supported by this edgevoice (which reads "
            f"version {SCHEMA_VERSION}); re-run `{fix}` with this edgevoice"
        )
    data.pop(_SELF_HASH_KEY)
    try:
        data["components"] = {k: Component.from_dict(v) for k, v in data["components"].items()}
        manifest = Manifest(**data, directory=directory)
    except (KeyError, TypeError) as exc:
        raise PackageError(f"{path}: malformed manifest ({exc}); re-run `{fix}`") from exc
    if recipe is not None and manifest.recipe != recipe:
        raise PackageError(
            f"{path}: the package holds recipe '{manifest.recipe}', not '{recipe}'; "
            f"export the right one with `edgevoice export --model {recipe} --out DIR`"
        )
    if verify_files:
        verify_files_of(manifest)
    return manifest


def verify_files_of(manifest: Manifest) -> None:
    """Every listed file exists with the recorded size and sha256; every component's files are listed."""
    fix = recreate_command(manifest.export_command, manifest.recipe, manifest.directory)
    for component in manifest.components.values():
        needed = [component.onnx, *component.files] + ([component.engine.file] if component.engine else [])
        for relative in needed:
            if relative not in manifest.files:
                raise PackageError(
                    f"{manifest.path(relative)}: component '{component.name}' uses a file the manifest "
                    f"does not hash; re-run `{fix}`"
                )
    for relative, record in manifest.files.items():
        path = manifest.path(relative)
        if not path.is_file():
            raise PackageError(f"{path} is missing from the package; re-run `{_fix_for(manifest, relative)}`")
        size = path.stat().st_size
        if size != record["bytes"]:
            raise PackageError(
                f"{path} has {size} bytes, the manifest says {record['bytes']} (truncated or replaced); "
                f"re-run `{_fix_for(manifest, relative)}`"
            )
        if sha256_file(path) != record["sha256"]:
            raise PackageError(
                f"{path} does not match its sha256 in the manifest (the file was changed); "
                f"re-run `{_fix_for(manifest, relative)}`"
            )


def check_engine(component: Component, tensorrt_version: str, compute_capability: str, fix: str) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU architecture."""
    engine = component.engine
    if engine is None:
        raise PackageError(f"component '{component.name}' has no TensorRT engine yet; run `{fix}` on the target")
    if _major_minor(engine.tensorrt_version) != _major_minor(tensorrt_version):
        raise PackageError(
            f"{engine.file} was built with TensorRT {engine.tensorrt_version} but this machine has "
            f"TensorRT {tensorrt_version}; rebuild it here with `{fix}`"
        )
    if engine.compute_capability != compute_capability:
        raise PackageError(
            f"{engine.file} was built for compute capability {engine.compute_capability} "
            f"({engine.device_name}) but this GPU is {compute_capability}; rebuild it here with `{fix}`"
        )


def _fix_for(manifest: Manifest, relative: str) -> str:
    engines = {c.engine.file for c in manifest.components.values() if c.engine}
    if relative in engines:
        return f"edgevoice build {manifest.directory}"
    return recreate_command(manifest.export_command, manifest.recipe, manifest.directory)


def recreate_command(export_command: str | None, recipe: str | None, directory: str | Path) -> str:
    """The export command that recreates the package in ``directory``, the folder the user named.

    The recorded command names the folder the package was first written to, which is not where it
    is read from once it was copied, moved or read through another path; and a fix-it command
    without ``--model`` would export the default model, not this one.
    """
    try:
        parts = shlex.split(export_command or "")
    except ValueError:  # a damaged manifest: rebuild the command from what is known
        parts = []
    if parts[:2] != ["edgevoice", "export"]:
        parts = ["edgevoice", "export"]
    if "--model" not in parts:
        parts[2:2] = ["--model", recipe or "MODEL"]
    if "--out" in parts and parts.index("--out") + 1 < len(parts):
        parts[parts.index("--out") + 1] = str(directory)
    else:
        parts = [p for p in parts if p != "--out"] + ["--out", str(directory)]
    return shlex.join(parts)


def _parse(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # The recipe's name usually survives the damage; MODEL stands in for it otherwise.
        found = re.search(rb'"recipe":\s*"([\w-]+)"', raw)
        fix = recreate_command(None, found.group(1).decode() if found else None, path.parent)
        raise PackageError(f"{path} is not valid JSON ({exc}); the file is damaged — re-create the package with `{fix}`") from exc
    if not isinstance(data, dict):
        raise PackageError(f"{path} is not a manifest (top level is not an object)")
    return data


def _check_self_hash(raw: bytes, data: dict[str, Any], path: Path, fix: str) -> None:
    recorded = data.get(_SELF_HASH_KEY)
    if not isinstance(recorded, str) or not re.fullmatch(r"[0-9a-f]{64}", recorded):
        raise PackageError(f"{path} has no valid {_SELF_HASH_KEY}; re-run `{fix}`")
    blanked = raw.replace(recorded.encode(), _HASH_PLACEHOLDER.encode(), 1)
    if hashlib.sha256(blanked).hexdigest() != recorded:
        raise PackageError(f"{path} was changed after export (its own hash does not match); re-run `{fix}`")


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def _by_name(specs: tuple[TensorSpec, ...], name: str, component: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise PackageError(f"component '{component}' has no tensor named '{name}'")
