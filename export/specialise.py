"""Specialised copies of an exported generator graph for one call pattern: which modalities are given, which
are wanted.

A sampling call gives the same modalities for every row and often wants only some outputs, yet the full
graph projects every modality's input (zeros where not given) and computes every output head. ONNX Runtime
runs every node whatever outputs are fetched, so the work is cut in the graph instead:

- inputs fixed for the call (the features of modalities not given, which are zeros, and the mask) become
  constants; ONNX Runtime's constant folding then computes their projections once, at session creation;
- the shared output head ``Split(Sigmoid(Gemm(h, W, b)))`` becomes one ``Sigmoid(Gemm(h, W[rows], b[rows]))``
  per wanted output, so the rows of ``W`` nobody wants are never read (at batch 1 the run is bound by
  reading weights, so bytes not read are time saved).

A graph without that head pattern keeps its head; the outputs are the same either way, and
:class:`~fastmmgan.export.OnnxGenerator` checks each specialised session against the full graph once
before using it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    found = [a for a in node.attribute if a.name == name]
    return helper.get_attribute_value(found[0]) if found else default


def _constant(name: str, inits: Mapping[str, onnx.TensorProto], producers: Mapping[str, onnx.NodeProto]) -> np.ndarray | None:
    """The value of ``name`` when it is an initializer or a Constant node's tensor output, else None."""
    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def _split_head(graph: onnx.GraphProto, outputs: Sequence[str]) -> bool:
    """Replace ``Split(Sigmoid(Gemm(h, W, b)))`` feeding the graph outputs by one Gemm + Sigmoid per output in
    ``outputs``. False (graph unchanged) when the head is not that pattern."""
    producers = _producers(graph)
    split = producers.get(outputs[0])
    if split is None or split.op_type != "Split" or _attr(split, "axis", 0) not in (1, -1):
        return False
    sigmoid = producers.get(split.input[0])
    gemm = producers.get(sigmoid.input[0]) if sigmoid is not None and sigmoid.op_type == "Sigmoid" else None
    inits = {i.name: i for i in graph.initializer}
    if gemm is None or gemm.op_type != "Gemm" or len(gemm.input) != 3 or not {gemm.input[1], gemm.input[2]} <= inits.keys():
        return False
    plain = {"transA": 0, "transB": 1, "alpha": 1.0, "beta": 1.0}
    if any(_attr(gemm, name, 1.0 if name in ("alpha", "beta") else 0) != value for name, value in plain.items()):
        return False
    sizes = _constant(split.input[1], inits, producers) if len(split.input) > 1 else _attr(split, "split", None)
    if sizes is None:
        return False
    sizes = list(np.asarray(sizes).reshape(-1).tolist())
    if len(sizes) != len(split.output):
        return False
    weight, bias = numpy_helper.to_array(inits[gemm.input[1]]), numpy_helper.to_array(inits[gemm.input[2]])
    starts = np.cumsum([0, *sizes])
    nodes, new_inits = [], []
    for name, lo, hi in zip(split.output, starts[:-1], starts[1:], strict=True):
        if name not in outputs:
            continue
        w, b = f"{name}/head_weight", f"{name}/head_bias"
        new_inits += [numpy_helper.from_array(np.ascontiguousarray(weight[lo:hi]), w), numpy_helper.from_array(bias[lo:hi], b)]
        nodes += [helper.make_node("Gemm", [gemm.input[0], w, b], [f"{name}/logits"], transB=1),
                  helper.make_node("Sigmoid", [f"{name}/logits"], [name])]
    kept = [n for n in graph.node if n not in (split, sigmoid, gemm)]
    del graph.node[:]
    graph.node.extend(kept + nodes)
    graph.initializer.extend(new_inits)
    return True


def specialise(model: onnx.ModelProto, constants: Mapping[str, np.ndarray], outputs: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` with the inputs in ``constants`` fixed to those arrays (batch 1, broadcast over the
    batch) and only ``outputs`` kept, with the output head split per output where its pattern allows."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    kept_inputs = [i for i in graph.input if i.name not in constants]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    graph.initializer.extend(numpy_helper.from_array(np.asarray(a, dtype=np.float32), name) for name, a in constants.items())
    _split_head(graph, list(outputs))
    kept_outputs = [o for o in graph.output if o.name in outputs]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    # Nodes nothing reads any more (the dropped heads' inputs): removed so no session computes them.
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            live.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(live))
    used = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)
    return model
