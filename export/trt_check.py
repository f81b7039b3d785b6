"""Op check vs the TensorRT ONNX parser support list: a static lint, runnable without a GPU.

This is not a parse by TensorRT. The authoritative answer is `OnnxParser.parse()` on the target
(`edgevoice build`); this lint catches the usual failures (unsupported or too-new ops, opset out of
range, custom domains, non-constant inputs the parser needs at build time, unsupported dtypes) on a
CPU machine, before a Jetson ever sees the model. The table it checks against is data,
`data/trt_onnx_ops.json`, summarized by hand from the onnx-tensorrt support matrix: the op table
from docs/operators.md as published for TensorRT 10.15, version gates (``since_trt``) from
docs/Changelog.md, parser opset ranges from docs/operators.md on the 8.6, 10.0-10.14 and 10.15
branches (the table's "source" field says the same). Older versions are answered through those
gates, so a result for 10.3 is only as exact as the changelog.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgevoice.errors import EdgevoiceError

_TABLE_PATH = Path(__file__).parent / "data" / "trt_onnx_ops.json"
_SUMMARY_MAX_ERRORS = 3


@dataclass(frozen=True)
class TrtIssue:
    node: str
    op: str
    message: str
    severity: str  # "error" | "warning"

    def describe(self) -> str:
        if self.op:
            return f"{self.op} (node {self.node}): {self.message}"
        return f"{self.node}: {self.message}" if self.node else self.message


@dataclass(frozen=True)
class TrtCheckResult:
    trt_version: str
    opset: int
    issues: tuple[TrtIssue, ...]
    node_count: int = 0

    @property
    def errors(self) -> tuple[TrtIssue, ...]:
        return tuple(i for i in self.issues if i.severity == "error")

    @property
    def warnings(self) -> tuple[TrtIssue, ...]:
        return tuple(i for i in self.issues if i.severity == "warning")

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        n_warn = len(self.warnings)
        head = f"op check vs TensorRT {self.trt_version} ONNX parser support list"
        if self.ok:
            return f"{head}: OK ({self.node_count} nodes, {n_warn} warning{'' if n_warn == 1 else 's'})"
        errs = self.errors
        listed = "; ".join(e.describe() for e in errs[:_SUMMARY_MAX_ERRORS])
        if len(errs) > _SUMMARY_MAX_ERRORS:
            listed += f"; ... (+{len(errs) - _SUMMARY_MAX_ERRORS} more)"
        counts = f"{len(errs)} error{'' if len(errs) == 1 else 's'}"
        if n_warn:
            counts += f", {n_warn} warning{'' if n_warn == 1 else 's'}"
        return f"{head}: {counts} — {listed}"


def parse_version(version: str) -> tuple[int, int, int]:
    """'10.3' / '10.3.0.30' / '10.3.0.30-1+cuda12.5' -> (10, 3, 0); padded so '10' == '10.0'."""
    match = re.match(r"^\s*(\d+(?:\.\d+)*)", str(version))
    if not match:
        raise EdgevoiceError(f"cannot read TensorRT version {version!r}: expected something like '10.3'")
    parts = [int(p) for p in match.group(1).split(".")][:3]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def load_table() -> dict[str, Any]:
    return json.loads(_TABLE_PATH.read_text(encoding="utf-8"))


def check_trt_compatibility(model: onnx.ModelProto | str | Path, trt_version: str = "10.3") -> TrtCheckResult:
    """Lint `model` against what the TensorRT `trt_version` ONNX parser accepts."""
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        if not path.is_file():
            raise EdgevoiceError(f"ONNX file not found: {path}")
        # Weights are irrelevant here; never pull gigabytes of external data into memory.
        model = onnx.load(str(path), load_external_data=False)
    checker = _Checker(model, trt_version, load_table())
    return checker.run()


def _with_inferred_types(model: onnx.ModelProto) -> onnx.ModelProto:
    # Shape inference fills value_info for intermediates, so dtype and rank checks see them.
    # It is best effort: custom ops or a >2 GB proto make it fail, and the lint still runs.
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - any inference failure just means less information
        return model


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _rank(value_info: onnx.ValueInfoProto | None) -> int | None:
    if value_info is None or not value_info.type.tensor_type.HasField("shape"):
        return None
    return len(value_info.type.tensor_type.shape.dim)


class _Checker:
    def __init__(self, model: onnx.ModelProto, trt_version: str, table: dict[str, Any]) -> None:
        self.version = parse_version(trt_version)
        self.trt_version = trt_version
        self.table = table
        self.model = _with_inferred_types(model)
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.expanding: set[tuple[str, str]] = set()  # guards against (invalid) recursive functions
        self.issues: list[TrtIssue] = []
        self.node_count = 0
        self.used: set[str] = set()  # every name read anywhere (subgraphs read outer names too)
        self.value_info: dict[str, onnx.ValueInfoProto] = {}

    def run(self) -> TrtCheckResult:
        opset = self._check_opset()
        self._collect_uses(self.model.graph)
        self._walk_graph(self.model.graph, {}, "", top=True)
        return TrtCheckResult(self.trt_version, opset, tuple(self.issues), self.node_count)

    # -- model level -------------------------------------------------------------------------
    def _error(self, node: str, op: str, message: str, severity: str = "error") -> None:
        self.issues.append(TrtIssue(node, op, message, severity))

    def _at_least(self, version: str) -> bool:
        return self.version >= parse_version(version)

    def _check_opset(self) -> int:
        opset = next((o.version for o in self.model.opset_import if o.domain in self.table["domains"]), 0)
        ranges = [r for r in self.table["opset_ranges"] if self._at_least(r["min_trt"])]
        if not ranges:
            oldest = self.table["opset_ranges"][0]["min_trt"]
            raise EdgevoiceError(f"TensorRT {self.trt_version} is older than this check covers (from {oldest})")
        lo, hi = ranges[-1]["min_opset"], ranges[-1]["max_opset"]
        if not lo <= opset <= hi:
            self._error("", "", f"opset {opset} is outside the TensorRT {self.trt_version} parser range {lo}-{hi}; "
                        f"re-export with opset_version between {lo} and {hi}")
        return opset

    def _collect_uses(self, graph: onnx.GraphProto) -> None:
        self.used.update(o.name for o in graph.output)
        for node in graph.node:
            self.used.update(n for n in node.input if n)
            for sub in self._subgraphs(node):
                self._collect_uses(sub)

    @staticmethod
    def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
        subs = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
        return subs + [g for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs]

    # -- graphs ------------------------------------------------------------------------------
    def _walk_graph(self, graph: onnx.GraphProto, outer: dict[str, Any], prefix: str, top: bool = False) -> None:
        consts = dict(outer)  # name -> TensorProto / ndarray / None (value unknown)
        consts.update((t.name, t) for t in graph.initializer)
        consts.update((s.values.name, None) for s in graph.sparse_initializer)
        self.value_info.update((v.name, v) for v in list(graph.input) + list(graph.output) + list(graph.value_info))
        self._check_tensor_types(graph, prefix, top)
        for index, node in enumerate(graph.node):
            self._check_node(node, f"{prefix}{node.name or f'{node.op_type}_{index}'}", consts)
            if node.op_type == "Constant" and node.domain in self.table["domains"]:
                consts[node.output[0]] = _constant_node_value(node)

    def _check_tensor_types(self, graph: onnx.GraphProto, prefix: str, top: bool) -> None:
        io = [(v.name, v.type.tensor_type.elem_type, True) for v in list(graph.input) + list(graph.output)]
        inner = [(v.name, v.type.tensor_type.elem_type, False) for v in graph.value_info]
        inner += [(t.name, t.data_type, False) for t in graph.initializer]
        for name, elem_type, is_io in io + inner:
            # Only the model's own inputs/outputs may be UINT8; subgraph I/O is internal to TensorRT.
            self._check_dtype(f"tensor {prefix}{name}", "", elem_type, "type", io_ok=is_io and top)

    def _check_dtype(self, node: str, op: str, elem_type: int, what: str, io_ok: bool) -> None:
        groups = self.table["tensor_types"]
        name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "UNDEFINED"
        if name in groups["unsupported"]:
            self._error(node, op, f"{what} {name} is not supported by TensorRT")
        elif name in groups["io_only"] and not io_ok:
            self._error(node, op, f"{what} {name} is allowed by TensorRT only for model inputs/outputs")
        elif name in groups["warn"]:
            self._error(node, op, f"{what} {name} is computed in FP32 by TensorRT", "warning")

    # -- nodes -------------------------------------------------------------------------------
    def _check_node(self, node: onnx.NodeProto, label: str, consts: dict[str, Any]) -> None:
        self.node_count += 1
        op = node.op_type
        if node.domain not in self.table["domains"]:
            key = (node.domain, op)
            if key in self.functions and key not in self.expanding:
                # The parser (10.x) inlines model-local functions, so check the body instead.
                self.expanding.add(key)
                for i, inner in enumerate(self.functions[key].node):
                    self._check_node(inner, f"{label}/{inner.name or f'{inner.op_type}_{i}'}", {})
                self.expanding.discard(key)
                return
            self._error(label, op, f"custom-domain op {node.domain}::{op} cannot be parsed by TensorRT without a "
                        "plugin; export with standard ai.onnx ops only")
            return
        entry = self.table["ops"].get(op)
        if entry is None:
            self._error(label, op, f"{op} is not in the TensorRT ONNX parser's operator table")
            return
        if not entry.get("supported", True):
            self._error(label, op, f"{op} is not supported by the TensorRT ONNX parser")
            return
        if not self._at_least(entry["since_trt"]):
            self._error(label, op, f"{op} needs TensorRT >= {entry['since_trt']} (target {self.trt_version})")
            return
        if op == "Cast":
            is_graph_output = node.output[0] in {o.name for o in self.model.graph.output}
            self._check_dtype(label, op, _attr(node, "to", 0), "target type", io_ok=is_graph_output)
        for rule in self.table["restrictions"].get(op, []):
            problem = _RULES[rule["check"]](self, node, rule, consts)
            if problem:
                self._error(label, op, problem, "warning" if rule["check"] == "warn" else "error")
        for sub in self._subgraphs(node):
            self._walk_graph(sub, consts, f"{label}/{sub.name or 'body'}/")


# -- restriction rules: each returns a message (the problem) or None ---------------------------
def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _constant_node_value(node: onnx.NodeProto) -> Any:
    """A Constant node's value as a TensorProto or numpy array (None for sparse/string forms)."""
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, onnx.TensorProto):
            return value
        if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
            return np.asarray(value)
    return None


def _const_value(consts: dict[str, Any], name: str) -> Any:
    """numpy value of a constant, or None when it is unknown (external data, non-tensor Constant)."""
    value = consts.get(name)
    if isinstance(value, np.ndarray):
        return value
    try:
        return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else None
    except Exception:  # noqa: BLE001 - external data not loaded: value unknown
        return None


def _rule_const_input(chk: _Checker, node: onnx.NodeProto, rule: dict, consts: dict[str, Any]) -> str | None:
    name = _input(node, rule["input"])
    if not name or name in consts:
        return None
    if "before_trt" in rule and chk._at_least(rule["before_trt"]):
        return None
    return f"input '{rule['name']}' is computed at run time: {rule['why']}"


def _rule_input_needs_trt(chk: _Checker, node: onnx.NodeProto, rule: dict, consts: dict[str, Any]) -> str | None:
    if _input(node, rule["input"]) and not chk._at_least(rule["since_trt"]):
        return f"input '{rule['name']}' given: {rule['why']} (target {chk.trt_version})"
    return None


def _rule_const_input_below(chk: _Checker, node: onnx.NodeProto, rule: dict, consts: dict[str, Any]) -> str | None:
    value = _const_value(consts, _input(node, rule["input"]))
    if value is not None and value.size and int(value.max()) >= rule["limit"]:
        return f"input '{rule['name']}' = {int(value.max())}: {rule['why']}"
    return None


def _rule_const_false_input(chk: _Checker, node: onnx.NodeProto, rule: dict, consts: dict[str, Any]) -> str | None:
    name = _input(node, rule["input"])
    if not name:
        return None
    value = _const_value(consts, name)
    if name in consts and (value is None or not value.any()):
        return None  # constant false (or an unreadable constant: give it the benefit of the doubt)
    return f"input '{rule['name']}' is not a constant false: {rule['why']}"


def _rule_attr_in(chk: _Checker, node: onnx.NodeProto, rule: dict, consts: dict[str, Any]) -> str | None:
    value = _attr(node, rule["attr"], rule["default"])
    if value not in rule["allowed"]:
        return f"{rule['attr']}={value!r}: {rule['why']}"
    return None


def _rule_unused_outputs(chk: _Checker, node: onnx.NodeProto, rule: dict, consts: dict[str, Any]) -> str | None:
    used = [n for n in node.output[rule["from_output"]:] if n and n in chk.used]
    return f"output(s) {', '.join(used)} are used: {rule['why']}" if used else None


def _rule_zero_point_zero(chk: _Checker, node: onnx.NodeProto, rule: dict, consts: dict[str, Any]) -> str | None:
    value = _const_value(consts, _input(node, rule["input"]))
    if value is not None and value.astype("float64").any():
        return f"non-zero {rule['name']}: {rule['why']}"
    return None


def _rule_forbidden_attrs(chk: _Checker, node: onnx.NodeProto, rule: dict, consts: dict[str, Any]) -> str | None:
    found = [a.name for a in node.attribute if a.name in rule["attrs"]]
    return f"attribute {found[0]}: {rule['why']}" if found else None


def _rule_input_rank(chk: _Checker, node: onnx.NodeProto, rule: dict, consts: dict[str, Any]) -> str | None:
    for index in rule["inputs"]:
        rank = _rank(chk.value_info.get(_input(node, index)))
        if rank is not None and rank != rule["rank"]:
            return f"input {index} has rank {rank}: {rule['why']}"
    return None  # unknown ranks pass: only the parser can tell


def _rule_branch_ranks(chk: _Checker, node: onnx.NodeProto, rule: dict, consts: dict[str, Any]) -> str | None:
    then_g, else_g = _attr(node, "then_branch"), _attr(node, "else_branch")
    if then_g is None or else_g is None:
        return None
    for i, (a, b) in enumerate(zip(then_g.output, else_g.output)):
        ra, rb = _rank(a), _rank(b)
        if ra is not None and rb is not None and ra != rb:
            return f"output {i} has rank {ra} in then_branch and {rb} in else_branch: {rule['why']}"
    return None


def _rule_attr_contains(chk: _Checker, node: onnx.NodeProto, rule: dict, consts: dict[str, Any]) -> str | None:
    value = _attr(node, rule["attr"], "") or ""
    if rule["contains"] in value and not chk._at_least(rule["since_trt"]):
        return f"{rule['attr']}={value!r}: {rule['why']} (target {chk.trt_version})"
    return None


def _rule_warn(chk: _Checker, node: onnx.NodeProto, rule: dict, consts: dict[str, Any]) -> str | None:
    return rule["why"]


_RULES = {
    "const_input": _rule_const_input,
    "input_needs_trt": _rule_input_needs_trt,
    "const_input_below": _rule_const_input_below,
    "const_false_input": _rule_const_false_input,
    "attr_in": _rule_attr_in,
    "unused_outputs": _rule_unused_outputs,
    "zero_point_zero": _rule_zero_point_zero,
    "forbidden_attrs": _rule_forbidden_attrs,
    "input_rank": _rule_input_rank,
    "branch_ranks": _rule_branch_ranks,
    "attr_contains_needs_trt": _rule_attr_contains,
    "warn": _rule_warn,
}
