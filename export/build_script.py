"""The on-target build recipe carried in every package: engine specs and equivalent trtexec lines.

`edgevoice build` uses the same specs through the TensorRT Python API; build.sh is for devices
where only JetPack's trtexec is at hand. Both give the graphs that batch the batch range the target's
memory holds (``edgevoice.export.budget.package_batch_range``), counted the same way from the
package's files, so the two routes build the same optimization profiles.
"""

from __future__ import annotations

from pathlib import Path

from edgevoice.export.budget import BatchRange, package_batch_range, with_batch_range
from edgevoice.export.to_trt import EngineBuildSpec, trtexec_command
from edgevoice.manifest import Component
from edgevoice.targets import TargetProfile

BUILD_SCRIPT = "build.sh"
TIMING_CACHE = "timing.cache"


def engine_file(component: Component) -> str:
    return f"{component.name}.{component.precision}.plan"


def profile_shapes(component: Component, ranges: dict[str, list[int]] | None = None) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min/opt/max shape of every input, from the named dynamic dims' ranges (``ranges`` overrides some)."""
    dims_range = {name: (r.min, r.opt, r.max) for name, r in component.dynamic_dims.items()} | {
        name: tuple(r) for name, r in (ranges or {}).items()}
    shapes = {}
    for spec in component.inputs:
        triple = []
        for which in range(3):  # min, opt, max
            triple.append(tuple(dims_range[d][which] if isinstance(d, str) else d for d in spec.shape))
        shapes[spec.name] = tuple(triple)
    return shapes


def component_profiles(component: Component) -> tuple[dict[str, tuple[tuple[int, ...], ...]], ...]:
    """One optimization profile, or one per ``stream["trt_profiles"]`` entry (the LLM: prefill, decode)."""
    declared = component.stream.get("trt_profiles")
    if not declared:
        return (profile_shapes(component),)
    return tuple(profile_shapes(component, entry["dims"]) for entry in declared)


def engine_spec(directory: Path, component: Component, target: TargetProfile) -> EngineBuildSpec:
    return EngineBuildSpec(
        onnx_path=directory / component.onnx,
        engine_path=directory / engine_file(component),
        profiles=component_profiles(component),
        workspace_mb=target.build.workspace_mb or 1024,
        builder_optimization_level=target.build.builder_optimization_level,
        timing_cache_path=directory / TIMING_CACHE,
    )


def batch_ranged(directory: Path, components: dict[str, Component],
                 target: TargetProfile) -> tuple[BatchRange, dict[str, Component]]:
    """The sessions ``target`` holds with this package, and the components with that batch range
    where their steps can share a call (the profiles of both build routes come from these)."""
    batch = package_batch_range(directory, components, target)
    return batch, {name: with_batch_range(component, batch) for name, component in components.items()}


def write_build_script(directory: Path, components: dict[str, Component], target: TargetProfile) -> list[str]:
    """Write build.sh (run from inside the package directory); return the file names written."""
    batch, ranged = batch_ranged(directory, components, target)
    lines = [
        "#!/usr/bin/env sh",
        f"# Builds the TensorRT engines of this package for {target.name} ({target.software_stack}).",
        "# Run it on the target itself: engines only run on the GPU and TensorRT version that built them.",
        "# `edgevoice build .` does the same through the Python API and records the engines in manifest.json;",
        "# engines built by this script are not recorded there.",
        f"# Sessions: {batch.summary()}.",
        "set -e",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-/usr/src/tensorrt/bin/trtexec}"',
    ]
    for component in ranged.values():
        spec = engine_spec(Path("."), component, target)
        command = trtexec_command(spec, trtexec="trtexec")
        lines.append('"$TRTEXEC"' + command[len("trtexec") :])  # the variable must stay unquoted-expandable
    path = directory / BUILD_SCRIPT
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return [BUILD_SCRIPT]
