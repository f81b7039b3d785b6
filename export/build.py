"""`edgevoice build`: TensorRT engines for every component of a package, on this machine's GPU.

The engines, their hashes, the TensorRT version and the GPU's compute capability go into the
manifest, which the runtime checks before deserializing anything. So does the batch range: the
graphs that batch get the sessions the target's memory holds (capped by the profile's max_batch)
as their batch dim and their optimization profiles, and each engine's build flags record it with
the number of sessions held (``Manifest.sessions_held``, which `edgevoice serve` reads).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from edgevoice.export.build_script import batch_ranged, engine_spec
from edgevoice.export.to_trt import build_engine, require_tensorrt_and_gpu
from edgevoice.errors import PackageError
from edgevoice.manifest import EngineInfo, Manifest, file_record, read_manifest, recreate_command, write_manifest
from edgevoice.targets import TargetProfile


def build_package(package: str | Path, progress: Callable[[str], None] | None = None) -> Manifest:
    """Build every component's engine into ``package`` and return the updated, verified manifest."""
    say = progress or (lambda _: None)
    manifest = read_manifest(package)
    if not manifest.components:
        raise PackageError(f"{manifest.directory} has no components to build; re-create it with "
                           f"`{recreate_command(manifest.export_command, manifest.recipe, package)}`")
    require_tensorrt_and_gpu()  # checks the GPU before any TensorRT object exists
    target = TargetProfile.from_dict(manifest.target, source=str(manifest.path("manifest.json")))
    batch, ranged = batch_ranged(manifest.directory, dict(manifest.components), target)
    if ranged != manifest.components:  # the memory holds fewer sessions than the export's range: say so
        say(batch.summary())
    components, files = dict(ranged), dict(manifest.files)
    caches = set()  # every spec names the package's one timing cache; collected, not read off the last spec
    for name, component in ranged.items():
        say(f"{name}: building TensorRT engine (this can take minutes)")
        spec = engine_spec(manifest.directory, component, target)
        info = build_engine(spec)
        rows = component.dynamic_dims.get("batch")
        engine = EngineInfo(
            file=spec.engine_path.name,
            tensorrt_version=info["tensorrt_version"],
            compute_capability=info["compute_capability"] or "unknown",
            device_name=info["device_name"] or "unknown",
            build_flags={"workspace_mb": spec.workspace_mb, "builder_optimization_level": spec.builder_optimization_level,
                         "batch": [rows.min, rows.opt, rows.max] if rows else [1, 1, 1],
                         "sessions_held": batch.sessions_held},
        )
        components[name] = replace(component, engine=engine)
        files[engine.file] = file_record(spec.engine_path)
        if spec.timing_cache_path is not None:
            caches.add(spec.timing_cache_path)
    for cache in caches:
        if cache.is_file():
            files[cache.name] = file_record(cache)
    updated = replace(manifest, components=components, files=files)
    write_manifest(updated)
    return read_manifest(updated.directory)
