"""`edgevoice export`: a recipe's torch components -> an engine package directory.

Stages per component: ONNX export (precision baked in) -> onnx.checker -> op check vs the TensorRT
ONNX parser support list of 10.3 and of the target's version (a static table, not a parse by
TensorRT: that happens at `edgevoice build`) -> optional parity against onnxruntime. Then the build
recipe (trtexec lines) and manifest.json with the sha256 of every file.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable

from edgevoice.export.budget import EXPORTABLE, check_memory
from edgevoice.export.build_script import write_build_script
from edgevoice.export.to_onnx import export_onnx, with_precision
from edgevoice.export.trt_check import check_trt_compatibility

from edgevoice import __version__
from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Component, DimRange, Manifest, file_record, write_manifest
from edgevoice.recipes import check_model, load_recipe
from edgevoice.recipes.base import Recipe
from edgevoice.targets import TargetProfile, check_precision, load_target

JETPACK6_TRT = "10.3"  # every graph must parse on JetPack 6's TensorRT
_WEIGHT_OPTIONS = ("weights", "llm", "cosyvoice", "whisper")  # weight folders: compared with their stamp, not as config values
# The code that decides what an export writes: graphs, their inputs and outputs, stream facts.
# Its digest goes into the manifest, so a package from other code is exported again even at
# the same version (a runtime change alone keeps the package).
GRAPH_SOURCE_PACKAGES = ("edgevoice.models", "edgevoice.modules", "edgevoice.recipes", "edgevoice.weights",
                         "edgevoice.export")
GRAPH_SOURCE_FILES = ("streaming.py", "manifest.py")  # in edgevoice/

# (stage description) -> None; the CLI turns these into a progress display.
Progress = Callable[[str], None]


def export_package(
    model: str,
    target: str,
    out: str | Path,
    precision: str | None = None,
    verify: bool = False,
    force: bool = False,
    voice: str | None = None,
    progress: Progress | None = None,
    weights: str | Path | None = None,
    llm: str | Path | None = None,
    cosyvoice: str | Path | None = None,
    whisper: str | Path | None = None,
) -> Manifest:
    """Export ``model`` for ``target`` into the directory ``out`` and return its verified manifest.

    ``precision`` defaults to the target profile's ``default_precision``: fp32 (the exact reference)
    for ``cpu``, fp16 for the GPU targets. Components imported as ONNX graphs (the cascade's Piper
    or Kokoro voice) stay fp32 in an fp16 package; their manifest entry says so. With ``verify``, streamed
    audio goes through torch and onnxruntime and the package records the max abs error per output;
    a parity or upstream-reference failure raises.

    A package already in ``out`` for the same model, target and precision, made by this edgevoice
    version, that verifies (and was verified, if ``verify``) is kept as it is unless ``force``:
    exporting the cascade takes minutes. ``voice`` picks the cascade's voice ("joe" by default,
    "kokoro" for the Apache-2.0 alternative). ``weights`` (Freeze-Omni's checkpoints/ folder) and
    ``llm`` (its Qwen2 directory) are the freeze-omni recipe's inputs; they are converted here.
    For vocalnet, ``weights`` is the VocalNet folder, ``cosyvoice`` the CosyVoice2 folder and
    ``whisper`` the Whisper folder (default: the one its config.json names).

    Recipes made only of torch components get a memory budget against the target
    (``edgevoice.export.budget``), recorded as ``config["memory_budget"]``; a recipe that does not
    fit is refused before any graph is written, naming a precision or targets that would fit.
    """
    say = progress or (lambda _: None)
    check_model(model)  # a typo fails in one line, before any stage is reported
    profile = load_target(target)
    precision = precision or profile.default_precision
    if precision not in EXPORTABLE:
        # The profile lists what the hardware runs; export writes only these so far.
        raise EdgevoiceError(f"precision '{precision}' cannot be exported yet (target '{profile.name}' runs it, "
                             f"but export writes {' and '.join(sorted(EXPORTABLE, reverse=True))} only); "
                             f"choose --precision fp16 or fp32")
    check_precision(profile, precision)
    options = _recipe_options(model, voice, weights, llm, cosyvoice, whisper)
    out = _prepare_out_dir(Path(out))
    existing = None if force else _up_to_date(out, model, profile, precision, verify, options)
    if existing is not None:
        say("the package is up to date")
        return existing
    _check_llm_memory(model, options, profile, precision, say)
    say(f"loading {model} weights")
    recipe = load_recipe(model, **options)
    if not recipe.imported:  # imported graphs are not torch modules: a partial count would mislead
        say("checking the memory budget")
        budget = check_memory(recipe.components, profile, precision, recipe.name)
        recipe.config["memory_budget"] = budget.to_dict()
    if model == "vocalnet":  # small or random weights still say what the published sizes need, per target
        from edgevoice.export.published import budgets_per_target
        from edgevoice.recipes.vocalnet.published import published_models

        say("measuring the published sizes against every target")
        recipe.config["published_budget"] = budgets_per_target(published_models(), "fp16")
    command = _export_command(model, target, out, precision, verify, options)
    components = {}
    for component in recipe.components:
        components[component.name] = _export_component(recipe, component, profile, precision, out, verify, say)
    for build in recipe.imported:
        say("importing ONNX component")
        imported = build(out, verify)
        components[imported.name] = _imported_component(imported, profile, verify)
    if verify and recipe.upstream:
        _check_upstream(recipe, say)
    say("writing build recipe and manifest")
    build_files = write_build_script(out, components, profile)
    files = {name: file_record(out / name) for c in components.values() for name in (c.onnx, *c.files)}
    files.update({name: file_record(out / name) for name in build_files})
    manifest = Manifest(
        schema_version=1,
        edgevoice_version=__version__,
        recipe=recipe.name,
        config={**recipe.config, "graph_source": graph_source_digest()},
        target=profile.to_dict(),
        export_command=command,
        components=components,
        files=files,
        directory=out,
    )
    write_manifest(manifest)
    return manifest


def _export_component(recipe: Recipe, component, profile: TargetProfile, precision, out, verify, say) -> Component:
    path = out / f"{component.name}.onnx"
    say(f"{component.name}: exporting ONNX ({precision})")
    component = with_precision(component, precision)
    entry = export_onnx(component, path, precision, max_batch=profile.build.max_batch, opt_batch=profile.build.opt_batch)
    say(f"{component.name}: op check vs TensorRT ONNX parser support list")
    results = _trt_checks(path, profile)
    parity = {}
    if verify and component.parity_feeds is not None:
        from edgevoice.export.verify import parity as run_parity

        say(f"{component.name}: parity torch vs onnxruntime")
        comparison = run_parity(component, entry, path)
        if not comparison.ok:
            raise EdgevoiceError(f"{path.name}: onnxruntime disagrees with torch: {comparison.summary()}")
        parity = comparison.max_errors()
    shipped = _copy_files(component, out)
    return replace(entry, files=shipped, parity=parity, trt_check={v: r.summary() for v, r in results.items()})


def _copy_files(component, out: Path) -> tuple[str, ...]:
    """Copy the component's runtime data files into the package."""
    for name, source in component.files.items():
        if not Path(source).is_file():
            raise EdgevoiceError(f"{component.name}: data file {source} is missing; reinstall the weights package")
        shutil.copyfile(source, out / name)
    return tuple(component.files)


def _imported_component(imported, profile: TargetProfile, verify: bool) -> Component:
    """Manifest entry of an imported graph (already written into the package by its builder)."""
    results = _trt_checks(imported.onnx_path, profile)
    if verify:
        failures = imported_parity_failures(imported)
        if failures:
            raise EdgevoiceError(
                f"{imported.onnx_path.name}: the rewritten graph differs from the original ({'; '.join(failures)})"
            )
    entry = imported.manifest_entry()
    # One session per engine for imported graphs: their batch dim is not a session dim we control.
    dims = {"batch": DimRange(1, 1, 1), **entry.dynamic_dims}
    return replace(entry, dynamic_dims=dims, trt_check={v: r.summary() for v, r in results.items()})


def imported_parity_failures(imported) -> list[str]:
    """'name value > limit' for each parity measurement of an imported graph over its limit.

    A float rewrite of an int8 graph differs by design (``parity_tolerance``); measurements that
    mean something else, such as a relative length, carry their own limit (``parity_limits``).
    """
    tolerance = getattr(imported, "parity_tolerance", 1e-4)
    limits = getattr(imported, "parity_limits", {})
    return [f"{name} {value:.2e} > {limits.get(name, tolerance):g}" for name, value in imported.parity.items()
            if not value <= limits.get(name, tolerance)]


def _trt_checks(path: Path, profile: TargetProfile) -> dict:
    versions = sorted({JETPACK6_TRT, profile.tensorrt_version or JETPACK6_TRT})
    results = {v: check_trt_compatibility(path, v) for v in versions}
    failed = [r for r in results.values() if not r.ok]
    if failed:
        raise EdgevoiceError(f"{path.name} fails the {failed[0].summary()}")
    return results


def _check_upstream(recipe: Recipe, say: Progress) -> None:
    """Each part of the recipe against its upstream implementation; recorded in config["upstream"]."""
    measured = {}
    for part, check in recipe.upstream.items():
        say(f"{part}: checking against {check.against}")
        values = check.run()
        failures = check.failures(values)
        if failures:
            raise EdgevoiceError(
                f"{recipe.name} {part}: our torch port differs from {check.against} ({'; '.join(failures)}); "
                f"the weights package may be another version: reinstall the one the README names"
            )
        measured[part] = {"against": check.against, **values, "limits": dict(check.limits)}
    recipe.config["upstream"] = measured


def _recipe_options(model: str, voice: str | None, weights: str | Path | None = None,
                    llm: str | Path | None = None, cosyvoice: str | Path | None = None,
                    whisper: str | Path | None = None) -> dict:
    if model == "vocalnet" or cosyvoice is not None or whisper is not None:
        options = _vocalnet_options(model, weights, llm, cosyvoice, whisper)
    else:
        options = _weight_options(model, weights, llm)
    if voice is None:
        return options
    if model != "cascade":
        raise EdgevoiceError(f"--voice applies to the cascade, not to '{model}'")
    from edgevoice.recipes.cascade.voices import voice_choice

    voice_choice(voice)  # unknown voice: fail before any work
    return {**options, "voice": voice}


def _weight_options(model: str, weights: str | Path | None, llm: str | Path | None) -> dict:
    """--weights/--llm: the freeze-omni recipe's folders, checked before any work."""
    if model != "freeze-omni":
        if weights is not None or llm is not None:
            raise EdgevoiceError(f"--weights and --llm apply to freeze-omni, not to '{model}'")
        return {}
    if weights is None or llm is None:
        raise EdgevoiceError("freeze-omni needs --weights CHECKPOINTS_DIR (Freeze-Omni's checkpoints/) and "
                             "--llm QWEN_DIR (its Qwen2 directory); export --model tiny needs neither")
    for flag, folder in (("--weights", weights), ("--llm", llm)):
        if not Path(folder).is_dir():
            raise EdgevoiceError(f"{flag} {folder} is not a directory; pass "
                                 + ("Freeze-Omni's checkpoints/ folder" if flag == "--weights" else "the Qwen2 directory"))
    return {"weights": str(Path(weights).resolve()), "llm": str(Path(llm).resolve())}


def _vocalnet_options(model: str, weights, llm, cosyvoice, whisper) -> dict:
    """--weights/--cosyvoice/--whisper: the vocalnet recipe's folders, checked before any work."""
    if model != "vocalnet":
        raise EdgevoiceError(f"--cosyvoice and --whisper apply to vocalnet, not to '{model}'")
    if llm is not None:
        raise EdgevoiceError("--llm applies to freeze-omni; vocalnet's LLM is in its --weights folder")
    if weights is None or cosyvoice is None:
        raise EdgevoiceError("vocalnet needs --weights VOCALNET_DIR (e.g. checkpoints/VocalNet-1B) and --cosyvoice "
                             "COSYVOICE_DIR (CosyVoice2-0.5B); export --model vocalnet-tiny needs neither")
    folders = {"weights": weights, "cosyvoice": cosyvoice, **({"whisper": whisper} if whisper is not None else {})}
    for key, folder in folders.items():
        if not Path(folder).is_dir():
            raise EdgevoiceError(f"--{key} {folder} is not a directory; pass the published folder")
    return {key: str(Path(folder).resolve()) for key, folder in folders.items()}


def _check_llm_memory(model: str, options: dict, profile: TargetProfile, precision: str, say: Progress) -> None:
    """Refuse a target the LLM alone cannot fit before reading gigabytes of weights."""
    if model != "freeze-omni":
        return
    from edgevoice.recipes.freeze_omni.recipe import llm_shapes

    say("checking the LLM's memory budget")
    check_memory(llm_shapes(options["llm"]), profile, precision, f"freeze-omni's LLM alone ({options['llm']})")


def _up_to_date(out: Path, model: str, profile: TargetProfile, precision: str, verify: bool, options: dict) -> Manifest | None:
    from edgevoice.errors import PackageError
    from edgevoice.manifest import MANIFEST_NAME, read_manifest
    from edgevoice.recipes import RECIPES

    if not (out / MANIFEST_NAME).is_file() or model not in RECIPES:
        return None
    try:
        manifest = read_manifest(out)
    except PackageError:
        return None  # damaged or foreign: export anew
    same = (
        manifest.recipe == model
        and _same_components(manifest, model)
        and manifest.target.get("name") == profile.name
        and manifest.edgevoice_version == __version__
        and manifest.config.get("graph_source") == graph_source_digest()
        and all(c.precision == precision or c.precision == "fp32" for c in manifest.components.values())
        and any(c.precision == precision for c in manifest.components.values())
        and all(manifest.config.get(k, "joe" if k == "voice" else None) == v
                for k, v in options.items() if k not in _WEIGHT_OPTIONS)
        and _same_weight_files(manifest, options)
    )
    verified = all(c.parity for c in manifest.components.values()) or not verify
    return manifest if same and verified else None


def graph_source_digest() -> str:
    """sha256 (16 hex digits) of the source files that decide what an export writes, each named
    by its place in the package, so the digest is the same wherever edgevoice is installed."""
    import hashlib
    import importlib

    import edgevoice

    named = {f"edgevoice/{name}": Path(edgevoice.__file__).parent / name for name in GRAPH_SOURCE_FILES}
    for package in GRAPH_SOURCE_PACKAGES:
        for root in importlib.import_module(package).__path__:
            for path in Path(root).rglob("*"):
                if path.is_file() and path.suffix in (".py", ".json"):
                    named[f"{package}/{path.relative_to(root).as_posix()}"] = path
    digest = hashlib.sha256()
    for name in sorted(named):
        digest.update(name.encode() + b"\0" + named[name].read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _same_components(manifest: Manifest, model: str) -> bool:
    """Whether the package holds the components the recipe makes now (one may have been added since)."""
    from edgevoice.recipes import expected_components, optional_components

    expected = expected_components(model)
    if expected is None:
        return True
    held = set(manifest.components)
    return set(expected) <= held <= set(expected) | set(optional_components(model))


def _same_weight_files(manifest: Manifest, options: dict) -> bool:
    """Whether the package was made from these weight folders, whose files are unchanged (names, sizes, times)."""
    if "weights" not in options:
        return True
    from edgevoice.recipes.freeze_omni.recipe import weights_stamp

    if "cosyvoice" in options:  # vocalnet: its folders and their stamp
        made_from = manifest.config.get("checkpoint", {})
        folders = [options[k] for k in ("weights", "cosyvoice", "whisper") if k in options]
        return all(made_from.get(k) == options.get(k) for k in ("weights", "cosyvoice", "whisper")) and (
            made_from.get("stamp") == weights_stamp(*folders))

    made_from = manifest.config.get("checkpoint", {})
    return (made_from.get("weights"), made_from.get("llm")) == (options["weights"], options["llm"]) and (
        made_from.get("stamp") == weights_stamp(options["weights"], options["llm"]))


def _prepare_out_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".edgevoice-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise EdgevoiceError(f"cannot write to output directory {out} ({exc.strerror}); choose another --out") from exc
    return out.resolve()


def _export_command(model: str, target: str, out: Path, precision: str, verify: bool, options: dict) -> str:
    parts = ["edgevoice", "export", "--model", model, "--target", target, "--out", str(out), "--precision", precision]
    parts += [f"--{k}={v}" for k, v in options.items()]
    return shlex.join(parts + (["--verify"] if verify else []))
