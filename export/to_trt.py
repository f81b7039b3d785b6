"""Build TensorRT engines from ONNX, on the device that will run them.

Written against the TensorRT Python API of 10.3 (JetPack 6) and 11.x (desktop); 8.6 (JetPack 6.0)
gets the explicit-batch flag it needs. TensorRT is imported inside functions only, so this module
imports on machines without it (CI, laptops), and `trtexec_command` works anywhere.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from edgevoice.backends.cuda import device_name, cuda_device_count, device_compute_capability, tensorrt_version
from edgevoice.errors import EdgevoiceError, MissingDependencyError

__all__ = [
    "EngineBuildSpec", "build_engine", "cuda_device_count", "device_compute_capability",
    "require_tensorrt_and_gpu", "tensorrt_version", "trtexec_command",
]

Shape = tuple[int, ...]
# One optimization profile: {input_name: (min_shape, opt_shape, max_shape)}.
Profile = dict[str, tuple[Shape, Shape, Shape]]

_NO_TENSORRT = (
    "TensorRT is not installed: on Jetson (JetPack 6) run `sudo apt install python3-libnvinfer`; "
    "on a desktop `pip install tensorrt` from NVIDIA's index (see README)"
)
_NO_GPU = (
    "no CUDA GPU found: `edgevoice build` must run on the target GPU "
    "(engines are built on the device that runs them)"
)


def require_tensorrt_and_gpu() -> ModuleType:
    """The `tensorrt` module, after checking a GPU exists; EdgevoiceError naming what is missing."""
    if cuda_device_count() == 0:  # first: no TensorRT object may be created without a GPU
        raise EdgevoiceError(_NO_GPU)
    try:
        import tensorrt
    except Exception as exc:  # noqa: BLE001
        raise MissingDependencyError(_NO_TENSORRT) from exc
    return tensorrt


@dataclass(frozen=True)
class EngineBuildSpec:
    onnx_path: Path
    engine_path: Path
    profiles: tuple[Profile, ...] = ()
    workspace_mb: int = 1024  # Jetson shares DRAM with the CPU: keep this modest
    builder_optimization_level: int = 3  # 0..5; 5 builds longest
    timing_cache_path: Path | None = None
    strongly_typed: bool = True
    dla_core: int | None = None

    def __post_init__(self) -> None:
        for profile in self.profiles:  # caught here, not as a -1 from TensorRT minutes into a build
            for name, (low, opt, high) in profile.items():
                if not all(a <= b <= c for a, b, c in zip(low, opt, high)) or not len(low) == len(opt) == len(high):
                    raise EdgevoiceError(f"optimization profile of input '{name}' must have min <= opt <= max in "
                                         f"every dim, got {tuple(low)} / {tuple(opt)} / {tuple(high)}")
        object.__setattr__(self, "onnx_path", Path(self.onnx_path))
        object.__setattr__(self, "engine_path", Path(self.engine_path))
        if self.timing_cache_path is not None:
            object.__setattr__(self, "timing_cache_path", Path(self.timing_cache_path))


def build_engine(spec: EngineBuildSpec) -> dict[str, Any]:
    """Parse spec.onnx_path, build and write spec.engine_path; returns facts about the build."""
    trt = require_tensorrt_and_gpu()
    if not spec.onnx_path.is_file():
        raise EdgevoiceError(f"ONNX file not found: {spec.onnx_path}")
    _check_dla_spec(trt, spec)
    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, spec))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(spec.onnx_path)):  # from a path so external .data files resolve
        errors = "; ".join(str(parser.get_error(i)).replace("\n", " ") for i in range(parser.num_errors))
        raise EdgevoiceError(f"TensorRT could not parse {spec.onnx_path}: {errors or 'no details given'}")
    config = _builder_config(trt, builder, spec)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EdgevoiceError(f"TensorRT failed to build an engine from {spec.onnx_path} (see the log above)")
    spec.engine_path.parent.mkdir(parents=True, exist_ok=True)
    spec.engine_path.write_bytes(plan)
    if spec.timing_cache_path is not None:
        spec.timing_cache_path.parent.mkdir(parents=True, exist_ok=True)
        spec.timing_cache_path.write_bytes(config.get_timing_cache().serialize())
    return {
        "tensorrt_version": str(trt.__version__),
        "device_name": device_name(),
        "compute_capability": device_compute_capability(),
        "build_seconds": round(time.perf_counter() - started, 3),
        "engine_bytes": int(plan.nbytes),
        "engine_path": str(spec.engine_path),
    }


def _major(trt: ModuleType) -> int:
    return int(str(trt.__version__).split(".")[0])


def _check_dla_spec(trt: ModuleType, spec: EngineBuildSpec) -> None:
    if spec.dla_core is None:
        return
    # TensorRT 10.x builds DLA engines only from weakly typed networks (FP16/INT8 flags); strongly
    # typed DLA arrives with 11.4.1 on JetPack 7.2.2+.
    if spec.strongly_typed and _major(trt) == 10:
        raise EdgevoiceError("DLA engines on TensorRT 10.x need strongly_typed=False (weak typing with FP16)")
    for profile in spec.profiles:
        for name, (mn, opt, mx) in profile.items():
            if not tuple(mn) == tuple(opt) == tuple(mx):
                raise EdgevoiceError(f"DLA needs static shapes, but input '{name}' has min/opt/max {mn}/{opt}/{mx}")


def _network_flags(trt: ModuleType, spec: EngineBuildSpec) -> int:
    kinds = trt.NetworkDefinitionCreationFlag
    flags = 0
    # 10.x: strong typing takes precisions from the ONNX (FP16 weights stay FP16); 11.x: always on.
    if spec.strongly_typed and hasattr(kinds, "STRONGLY_TYPED"):
        flags |= 1 << int(kinds.STRONGLY_TYPED)
    # 8.x still defaults to implicit batch, which the ONNX parser rejects; 10.x ignores the flag.
    if _major(trt) < 10 and hasattr(kinds, "EXPLICIT_BATCH"):
        flags |= 1 << int(kinds.EXPLICIT_BATCH)
    return flags


def _builder_config(trt: ModuleType, builder: Any, spec: EngineBuildSpec) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mb << 20)
    config.builder_optimization_level = spec.builder_optimization_level
    # A timing cache is valid per (GPU model, TensorRT version): reuse makes rebuilds fast on Jetson.
    previous = b""
    if spec.timing_cache_path is not None and spec.timing_cache_path.is_file():
        previous = spec.timing_cache_path.read_bytes()
    config.set_timing_cache(config.create_timing_cache(previous), ignore_mismatch=False)
    for shapes in spec.profiles:  # batch ranges included: the build's batch range is the batch dim's min/opt/max
        profile = builder.create_optimization_profile()
        for name, (mn, opt, mx) in shapes.items():
            profile.set_shape(name, tuple(mn), tuple(opt), tuple(mx))
        if config.add_optimization_profile(profile) < 0:  # TensorRT's answer for an invalid profile
            raise EdgevoiceError(f"TensorRT refused the optimization profile {shapes} of {spec.onnx_path.name}")
    if spec.dla_core is not None:
        # Weakly typed DLA build (10.x): DLA runs FP16/INT8 only; unsupported layers fall back to the GPU.
        if not spec.strongly_typed and hasattr(trt.BuilderFlag, "FP16"):
            config.set_flag(trt.BuilderFlag.FP16)
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = spec.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return config


def _shapes_arg(profile: Profile, which: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[which])}" for name, shapes in profile.items())


def trtexec_command(spec: EngineBuildSpec, trtexec: str = "trtexec") -> str:
    """The trtexec command line equivalent to `build_engine(spec)`, for building by hand on the device."""
    args = [shlex.quote(trtexec), f"--onnx={shlex.quote(str(spec.onnx_path))}",
            f"--saveEngine={shlex.quote(str(spec.engine_path))}"]
    if spec.strongly_typed:
        args.append("--stronglyTyped")  # required for ONNX precisions on 10.x, a harmless no-op on 11.x
    if spec.profiles:
        # trtexec takes a single profile from these flags; further profiles need build_engine.
        profile = spec.profiles[0]
        for which, flag in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
            args.append(f"{flag}={shlex.quote(_shapes_arg(profile, which))}")
    args.append(f"--memPoolSize=workspace:{spec.workspace_mb}M")
    args.append(f"--builderOptimizationLevel={spec.builder_optimization_level}")
    if spec.timing_cache_path is not None:
        args.append(f"--timingCacheFile={shlex.quote(str(spec.timing_cache_path))}")
    if spec.dla_core is not None:
        args += [f"--useDLACore={spec.dla_core}", "--allowGPUFallback"]
        if not spec.strongly_typed:
            args.append("--fp16")  # weakly typed DLA (10.x); the flag no longer exists on 11.x
    args.append("--skipInference")
    return " ".join(args)
