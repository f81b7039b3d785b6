"""Target hardware profiles: what a device can run and the engine-build defaults that suit it.

Profiles are JSON files in the top-level `hw/` folder, installed as the data package `edgevoice.hw`.
Numbers in them are approximate spec-sheet values, good for sizing and sanity checks, not benchmarks.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevoice.errors import EdgevoiceError

KINDS = ("cpu", "jetson", "dgpu")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
ALIASES_FILE = "aliases.json"

# Allowed JSON types per field (bool is checked apart because bool is a subclass of int).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "description": (str,),
    "kind": (str,),
    "compute_capability": (str, type(None)),
    "memory_gb": (float, int),
    "memory_shared_with_cpu": (bool,),
    "memory_bandwidth_gbs": (float, int),
    "peak_tflops_fp16": (float, int),
    "precisions": (list,),
    "dla_cores": (int,),
    "tensorrt_version": (str, type(None)),
    "software_stack": (str,),
    "build": (dict,),
    "default_precision": (str,),
    "notes": (str,),
}


@dataclass(frozen=True)
class BuildDefaults:
    """Engine-build settings that fit the device's memory and expected load."""

    workspace_mb: int  # TensorRT workspace pool limit; small on Jetson because memory is shared
    builder_optimization_level: int  # TensorRT builder effort (0-5); 3 is TensorRT's own default
    max_batch: int  # most concurrent sessions one engine's optimization profile must accept
    opt_batch: int  # batch size TensorRT tunes kernels for (one live conversation is the usual case)


@dataclass(frozen=True)
class TargetProfile:
    """One deployment target, as read from hw/<name>.json."""

    name: str  # file stem and the name users type, e.g. "jetson-orin-nx"
    description: str  # one human-readable line
    kind: str  # "cpu" | "jetson" | "dgpu": decides the backend and memory strategy
    compute_capability: str | None  # CUDA SM version like "8.7"; None for cpu
    memory_gb: float  # total device memory (on Jetson: the whole shared LPDDR5 pool)
    memory_shared_with_cpu: bool  # True when weights, caches and the OS share one memory pool
    memory_bandwidth_gbs: float  # approximate peak bandwidth; streaming decode is usually bound by it
    peak_tflops_fp16: float  # approximate dense FP16 tensor throughput (a rough FP32 figure for cpu)
    precisions: tuple[str, ...]  # precisions the hardware runs natively, subset of PRECISIONS
    dla_cores: int  # Jetson deep-learning accelerator cores (0 = none)
    tensorrt_version: str | None  # TensorRT release the engine must be built with; None for cpu
    software_stack: str  # the OS/driver/CUDA stack this profile assumes
    build: BuildDefaults  # engine-build defaults
    default_precision: str  # precision used when the user does not choose one
    notes: str  # caveats, including that the numbers are approximate

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> TargetProfile:
        """Validate and build a profile; `source` (usually the file path) goes into error messages."""
        if not isinstance(d, dict):
            raise EdgevoiceError(f"target profile {source}: expected a JSON object, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        _check_keys(d, fields, source)

        values: dict[str, Any] = {}
        for key in fields:
            values[key] = _check_value(key, d[key], _FIELD_TYPES[key], source)

        build = d["build"]  # already checked to be an object
        build_fields = {f.name: f for f in dataclasses.fields(BuildDefaults)}
        _check_keys(build, build_fields, source, prefix="build.")
        values["build"] = BuildDefaults(
            **{k: _check_value(f"build.{k}", build[k], (int,), source) for k in build_fields}
        )

        # Cross-field checks: catch typos that would otherwise surface much later in an engine build.
        if values["kind"] not in KINDS:
            raise EdgevoiceError(f"target profile {source}: key 'kind' must be one of {', '.join(KINDS)}")
        precisions = d["precisions"]
        if not isinstance(precisions, list) or not all(p in PRECISIONS for p in precisions):
            raise EdgevoiceError(
                f"target profile {source}: key 'precisions' must be a list drawn from {', '.join(PRECISIONS)}"
            )
        values["precisions"] = tuple(precisions)
        if values["default_precision"] not in precisions:
            raise EdgevoiceError(f"target profile {source}: key 'default_precision' is not in 'precisions'")
        if (values["kind"] == "cpu") != (values["compute_capability"] is None):
            raise EdgevoiceError(
                f"target profile {source}: key 'compute_capability' must be null for cpu and set for GPUs"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, the inverse of from_dict."""
        d = dataclasses.asdict(self)
        d["precisions"] = list(self.precisions)
        return d

    @property
    def is_gpu(self) -> bool:
        return self.kind != "cpu"

    def supports(self, precision: str) -> bool:
        return precision in self.precisions


def _check_keys(d: dict[str, Any], fields: dict[str, Any], source: str, prefix: str = "") -> None:
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise EdgevoiceError(f"target profile {source}: unknown key '{prefix}{unknown[0]}'")
    missing = [k for k in fields if k not in d]
    if missing:
        raise EdgevoiceError(f"target profile {source}: missing key '{prefix}{missing[0]}'")


def _check_value(key: str, value: Any, types: tuple[type, ...], source: str) -> Any:
    if isinstance(value, bool) and bool not in types:
        ok = False  # JSON true/false must not pass as a number
    else:
        ok = isinstance(value, types)
    if not ok:
        names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise EdgevoiceError(f"target profile {source}: key '{key}' must be {names}, got {value!r}")
    return float(value) if float in types and isinstance(value, int) else value


def hw_dir() -> Path:
    """Folder holding the profile JSON files (installed package data, or hw/ in a source checkout)."""
    try:
        spec = importlib.util.find_spec("edgevoice.hw")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    # Not installed: edgevoice/ and hw/ sit side by side at the repo root.
    return Path(__file__).resolve().parent.parent / "hw"


def _resolve_dir(directory: str | Path | None) -> Path:
    return Path(directory) if directory is not None else hw_dir()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise EdgevoiceError(f"cannot read target profile {path}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise EdgevoiceError(f"target profile {path} is not valid JSON: {e}") from e


@functools.lru_cache(maxsize=None)
def _aliases(directory: Path) -> dict[str, str]:
    path = directory / ALIASES_FILE
    if not path.exists():
        return {}
    data = _read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise EdgevoiceError(f"target profile {path}: expected an object mapping alias -> target name")
    return data


@functools.lru_cache(maxsize=None)
def _names(directory: Path) -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in directory.glob("*.json") if p.name != ALIASES_FILE))


@functools.lru_cache(maxsize=None)
def _load(name: str, directory: Path) -> TargetProfile:
    path = directory / f"{name}.json"
    profile = TargetProfile.from_dict(_read_json(path), source=str(path))
    if profile.name != name:
        raise EdgevoiceError(f"target profile {path}: key 'name' is '{profile.name}', expected '{name}'")
    return profile


def list_targets(directory: str | Path | None = None) -> list[str]:
    """Sorted target names (aliases excluded)."""
    return list(_names(_resolve_dir(directory)))


def load_target(name: str, directory: str | Path | None = None) -> TargetProfile:
    """Load a target by name or alias; `directory` overrides hw_dir() (tests, custom profiles)."""
    folder = _resolve_dir(directory)
    aliases = _aliases(folder)
    resolved = aliases.get(name, name)
    names = _names(folder)
    if resolved not in names:
        alias_text = ", ".join(f"{a} -> {t}" for a, t in sorted(aliases.items()))
        raise EdgevoiceError(
            f"unknown target '{name}'; known targets: {', '.join(names)}"
            + (f" (aliases: {alias_text})" if alias_text else "")
        )
    return _load(resolved, folder)


def check_precision(target: TargetProfile | str, precision: str) -> None:
    """Raise EdgevoiceError when `target` (profile or name) cannot run `precision`."""
    profile = load_target(target) if isinstance(target, str) else target
    if not profile.supports(precision):
        raise EdgevoiceError(
            f"target '{profile.name}' does not support precision '{precision}'; "
            f"supported: {', '.join(profile.precisions)}"
        )
