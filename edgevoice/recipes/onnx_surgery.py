"""Small ONNX graph edits shared by the recipes that import graphs (Piper, Kokoro)."""

from __future__ import annotations

import onnx


def prune_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers no graph output depends on (left over after a rewrite)."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    live = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(live)
