"""Export one streaming component's pure step to ONNX with named state I/O and dynamic batch.

Graph contract: inputs ``(x_name, *state names)``, outputs ``(y_name, *f"{state}_out")``. The
batch dim is dynamic (named "batch") so one engine serves several sessions; every other dim is
static, which TensorRT and CUDA graphs want. Facts the runtime needs are written into the
manifest and mirrored into the ONNX ``metadata_props``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Component, DimRange, TensorSpec
from edgevoice.recipes.base import RecipeComponent
from edgevoice.streaming import StreamingModule

OPSET = 20  # highest opset the TensorRT 10.3 parser (JetPack 6) reads; dynamo needs >= 18
_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


class _Step(nn.Module):
    """Wraps ``step`` so torch.export sees plain positional tensors."""

    def __init__(self, module: StreamingModule):
        super().__init__()
        self.module = module

    def forward(self, *inputs_and_state: torch.Tensor):
        return self.module.step(*inputs_and_state)


def with_precision(component: RecipeComponent, precision: str) -> RecipeComponent:
    """A copy of ``component`` computing in ``precision``; the recipe's own module stays untouched."""
    if precision not in _PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    module = copy.deepcopy(component.module).set_compute_dtype(_PRECISIONS[precision])
    if precision != "fp32" and component.stream.get("weights") == "gguf":
        # GGUF codes replace float32 weights (onnxruntime's 4-bit CPU kernels); an fp16 graph is for
        # TensorRT, which would fold them back to float anyway: it keeps its fp16 weights.
        stream = {k: v for k, v in component.stream.items() if k != "weights"}
        return dataclasses.replace(component, module=module, stream=stream, block_codes=None)
    return dataclasses.replace(component, module=module)


_EXAMPLE_BATCH = 2  # >1 so torch.export does not specialize the batch dim


def _dims(component: RecipeComponent, max_batch: int) -> dict[str, torch.export.Dim]:
    ranges = {"batch": (1, max(max_batch, _EXAMPLE_BATCH))}
    ranges.update({name: (lo, hi) for name, (lo, _, hi) in component.module.dim_ranges().items()})
    return {name: torch.export.Dim(name, min=lo, max=hi) for name, (lo, hi) in ranges.items()}


def example_inputs(component: RecipeComponent) -> tuple[torch.Tensor, ...]:
    """Example step inputs for tracing; dynamic dims take their opt size (at least 2)."""
    module = component.module
    sizes = {"batch": _EXAMPLE_BATCH, **{n: max(opt, 2) for n, (_, opt, _) in module.dim_ranges().items()}}
    inputs = [torch.zeros([sizes[d] if isinstance(d, str) else d for d in spec.shape], dtype=spec.dtype)
              for spec in module.input_specs()]
    return (*inputs, *module.init_state(_EXAMPLE_BATCH, sizes))


def export_onnx(
    component: RecipeComponent, path: Path, precision: str, max_batch: int, opt_batch: int = 1
) -> Component:
    """Write ``path`` and return the component's manifest entry (files are hashed by the caller).

    ``component.module`` must already compute in ``precision`` (see ``with_precision``).
    """
    module = component.module.eval()
    specs = module.state_specs()
    dims = _dims(component, max_batch)
    step_inputs = module.input_specs()
    # forward(*inputs, *state): one dynamic-shape dict per positional tensor
    dynamic_shapes = tuple(
        {i: dims[d] for i, d in enumerate(spec.shape) if isinstance(d, str)} for spec in step_inputs
    ) + tuple({s.batch_dim: dims["batch"]} | {i: dims[d] for i, d in enumerate(s.shape) if isinstance(d, str)}
              for s in specs)
    input_names = [spec.name for spec in step_inputs] + [s.name for s in specs]
    output_names = list(module.output_names()) + [f"{s.name}_out" for s in specs]
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            _Step(module),
            example_inputs(component),
            dynamic_shapes=(dynamic_shapes,),
            dynamo=True,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            verbose=False,
        )
    model = program.model_proto
    if component.stream.get("weights") == "int8":  # weight-only int8 as DequantizeLinear -> MatMul (TensorRT parses it)
        from edgevoice.export.quantize import weights_int8_dq

        weights_int8_dq(model)
    elif component.stream.get("weights") == "gguf":  # the GGUF's own codes, standard ops (export/quantize.py)
        from edgevoice.export.quantize import weights_block_codes

        if precision != "fp32" or weights_block_codes(model, component.block_codes()) == 0:
            raise EdgevoiceError(f"{component.name}: GGUF-coded weights need an fp32 export of a GGUF model's "
                                 f"quantized weights (precision {precision}, no weight matched its codes); "
                                 f"export with llm_weights='fp32' instead")
    entry = _manifest_entry(component, model, precision, max_batch, opt_batch)
    _write_metadata(model, entry)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return entry


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress prints, warnings and log lines: they are not for our users.

    Real failures still raise; the CLI shows its own progress.
    """
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _manifest_entry(
    component: RecipeComponent, model: onnx.ModelProto, precision: str, max_batch: int, opt_batch: int
) -> Component:
    state_names = [s.name for s in component.module.state_specs()]
    return Component(
        name=component.name,
        onnx=f"{component.name}.onnx",
        opset=OPSET,
        precision=precision,
        inputs=tuple(_tensor_spec(v) for v in model.graph.input),
        outputs=tuple(_tensor_spec(v) for v in model.graph.output),
        dynamic_dims={
            "batch": DimRange(min=1, opt=min(opt_batch, max_batch), max=max_batch),
            **{n: DimRange(*r) for n, r in component.module.dim_ranges().items()},
        },
        state={f"{name}_out": name for name in state_names},
        initial_state={name: "zeros" for name in state_names},
        stream=dict(component.stream),
        license=component.license,
    )


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    shape = tuple(d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim)
    return TensorSpec(name=value.name, dtype=dtype, shape=shape)


def _write_metadata(model: onnx.ModelProto, entry: Component) -> None:
    from edgevoice import __version__

    facts = {
        "edgevoice_version": __version__,
        "component": entry.name,
        "precision": entry.precision,
        "state": json.dumps(entry.state),
        "stream": json.dumps(entry.stream),
        "license": entry.license,
    }
    del model.metadata_props[:]
    for key, value in facts.items():
        model.metadata_props.add(key=key, value=str(value))
