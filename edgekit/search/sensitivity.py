"""Which quantized nodes hurt: rank them by the quantization noise each one adds.

The float model (as the INT8 recipes see it: pre-processed, every node named) and a
quantized candidate run side by side on calibration data, both augmented by ONNX
Runtime's ``qdq_loss_debug`` to output every intermediate float tensor. Tensors keep
their names through quantization, so each float tensor is compared with its quantized
counterpart, as a noise-to-signal ratio (NSR = |q - f|^2 / |f|^2, summed over samples).

A node's score is the noise it adds: the NSR of its output minus the largest NSR of its
inputs. Noise that merely flows through a node does not count against it; the node
where a quantized tensor is crushed (outliers that stretch a per-tensor scale, a weight
with one huge column) stands out. Only the nodes the candidate quantizes are ranked, and
the names are those ``recipe.exclude`` takes.

In a QDQ model a tensor is compared as its consumers see it (after its DequantizeLinear).
QDQ drops a Relu or Clip that follows a quantized node (the QuantizeLinear clips instead)
and its producer then writes the activation's output: such a pair is ranked as one entry
of two nodes, since only keeping both in float brings the activation back.

Noise can hide: where a few outlier channels carry most of a tensor's energy, the other
channels' noise barely moves the NSR, until a later node scales the outliers down and
the noise shows. When that later node is the one quantized, the score blames it; once it
is kept in float (``kept``: the nodes a search keeps in float on purpose), the noise its
output gains cannot be its own, and is traced back to the nearest quantized nodes
upstream (``traced``, part of their score).

A MatMul, Gemm or Conv is also scored by its own error, the float node run on the very
inputs the quantized model gave it (edgekit.search.local), so that a node whose error only
shows downstream (a classifier head reading an already noisy input) is ranked by what it
does itself; its score is the larger of the two measures.

Scores are finite: a float tensor that is not (an additive attention mask holds -inf or
finfo.min) is left out of the comparison, and a quantized tensor that overflowed counts as
noise _MAX_NSR times its signal, so no NaN or overflow warning is raised either.

Scores are relative noise powers, not dB: an SQNR drop of 30 dB down to 25 dB adds far
less noise than one of 20 dB down to 5 dB, and the ranking should say so.

Memory: ``samples`` calibration samples are fed ``batch_size`` at a time, and only two
sums per tensor are kept between batches; one batch of every activation of both models
is the peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from edgekit.datasets import Dataset
from edgekit.progress import OnStep, notify

__all__ = ["NodeSensitivity", "rank_nodes"]

_SAVED = "_ReshapedSavedOutput"  # qdq_loss_debug's suffix for an augmented model's extra outputs
_MIN_SCORE = 1e-9  # below this a node adds no noise worth keeping it in float for
_MAX_NSR = 1e6  # a quantized tensor that overflowed or turned NaN: the worst, but a finite score
_FOLDABLE = ("Relu", "Clip")  # activations that QDQ folds into the QuantizeLinear before them
_TRACE_DEPTH = 4  # nodes a kept node's noise is traced back through (bias Add, Relu, Reshape, ...)


@dataclass(frozen=True)
class NodeSensitivity:
    nodes: tuple[str, ...]  # the node, and a fused activation that goes with it
    op_type: str
    score: float  # relative noise power the node adds (NSR of its output minus its inputs')
    sqnr_db: float  # its output against the float model's
    traced: float = 0.0  # the part of score that showed up later, in a node kept in float

    def record(self) -> dict:
        return {"nodes": list(self.nodes), "op_type": self.op_type, "score": round(self.score, 8),
                "traced": round(self.traced, 8), "sqnr_db": round(self.sqnr_db, 2)}


def rank_nodes(float_model: Path, quantized: Path, calibration: Dataset, workdir: Path, *,
               samples: int = 32, batch_size: int = 8, kept: Iterable[str] = (),
               on_step: Optional[OnStep] = None) -> list[NodeSensitivity]:
    """The nodes `quantized` quantizes, most harmful first (those that add no noise left out).

    `float_model` is the graph the recipe quantized, as edgekit.toolchains.onnx.quantize.prepared gives it;
    `kept` names nodes `quantized` keeps in float, whose noise is traced back (module docstring)."""
    import onnx

    from edgekit.toolchains.onnx.models import model_inputs

    workdir.mkdir(parents=True, exist_ok=True)
    from edgekit.search.local import LocalErrors

    float_proto = onnx.load(str(float_model))
    nodes = list(float_proto.graph.node)
    q_graph = onnx.load(str(quantized), load_external_data=False).graph
    units = _units(nodes, q_graph)
    feeds = _feeds(calibration, model_inputs(float_model), samples, batch_size, on_step)
    notify(on_step, "sensitivity", "augmenting the models")
    local = LocalErrors(float_proto, Path(quantized), {u[0].name for u in units}, _visible(q_graph))
    nsr = _noise_ratios(Path(float_model), Path(quantized), _visible(q_graph), feeds, workdir, local)
    own = local.ratios(_MAX_NSR)
    producers = {o: n for n in nodes for o in n.output}
    traced = _traced([n for n in nodes if n.name in set(kept)], units, nsr, producers)
    scored = (_score(unit, nsr, producers, traced.get(unit[0].name, 0.0), own.get(unit[0].name)) for unit in units)
    return sorted((s for s in scored if s is not None and s.score > _MIN_SCORE), key=lambda s: -s.score)


def _units(float_nodes, q_graph) -> list[list]:
    """The quantized float nodes, each alone or with the fused activation it now stands for.

    A float node is quantized when the quantized graph replaced it (int8-dynamic renames
    it) or feeds it from a DequantizeLinear (QDQ keeps the node and quantizes around it)."""
    q_nodes = {n.name: n for n in q_graph.node}
    dequantized = {o for n in q_nodes.values() if n.op_type == "DequantizeLinear" for o in n.output}
    producers = {o: n for n in float_nodes for o in n.output}
    fused = {}  # producer name -> the Relu/Clip that QDQ folded into its QuantizeLinear
    for n in float_nodes:
        source = producers.get(n.input[0]) if n.input else None
        if n.op_type in _FOLDABLE and n.name not in q_nodes and source is not None and source.name in q_nodes:
            fused[source.name] = n
    units = []
    for n in float_nodes:
        if any(n is f for f in fused.values()):
            continue
        if n.name not in q_nodes or any(i in dequantized for i in q_nodes[n.name].input):
            units.append([n, fused[n.name]] if n.name in fused else [n])
    return units


def _visible(q_graph) -> dict[str, str]:
    """Tensor -> the DequantizeLinear output its consumers read instead, in a QDQ graph."""
    consumers: dict[str, list] = {}
    for n in q_graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    seen = {}
    for n in q_graph.node:
        if n.op_type == "QuantizeLinear":
            dq = [c for c in consumers.get(n.output[0], []) if c.op_type == "DequantizeLinear"]
            if dq:
                seen[n.input[0]] = dq[0].output[0]
    return seen


def _feeds(data: Dataset, specs, samples: int, batch_size: int, on_step: Optional[OnStep]):
    dtypes = {s.name: np.dtype(s.dtype) for s in specs}
    n = min(samples, len(data))
    for k, (inputs, _) in enumerate(data.batches(batch_size, limit=n)):
        notify(on_step, "sensitivity", f"batch {k + 1} of {-(-n // batch_size)}")
        yield {name: np.ascontiguousarray(inputs[name], dtype=dtype) for name, dtype in dtypes.items()}


def _noise_ratios(float_model: Path, quantized: Path, visible: dict[str, str], feeds, workdir: Path,
                  local=None) -> dict[str, float]:
    """NSR of every float tensor the two models share, summed over the batches (and, into
    `local`, the own error of each quantized linear node: edgekit.search.local)."""
    f_session = _augmented_session(float_model, workdir / "float-augmented.onnx")
    q_session = _augmented_session(quantized, workdir / "quantized-augmented.onnx")
    f_saved, q_saved = _saved_outputs(f_session), _saved_outputs(q_session)
    pairs = {t: visible.get(t, t) for t in f_saved if visible.get(t, t) in q_saved}
    signal, noise = dict.fromkeys(pairs, 0.0), dict.fromkeys(pairs, 0.0)
    for batch in feeds:
        f_out = dict(zip(f_saved, f_session.run(list(f_saved.values()), batch)))
        q_out = dict(zip(q_saved, q_session.run(list(q_saved.values()), batch)))
        if local is not None:
            local.add(batch)
        for name, q_name in pairs.items():
            f, q = f_out[name].astype(np.float64), q_out[q_name].astype(np.float64)
            if name in signal and f.shape == q.shape and np.isfinite(f).all():
                with np.errstate(over="ignore", invalid="ignore"):
                    signal[name] += float(np.sum(f * f))
                    noise[name] += float(np.sum((q - f) ** 2))
            else:  # not the same tensor after all, or one no ratio describes (an attention mask's -inf)
                signal.pop(name, None)
    return {name: min(noise[name] / signal[name], _MAX_NSR) if np.isfinite(noise[name]) else _MAX_NSR
            for name in signal if 0 < signal[name] < np.inf}


def _augmented_session(model: Path, dest: Path):
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

    modify_model_output_intermediate_tensors(str(model), str(dest))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor as named
    options.log_severity_level = 3
    return ort.InferenceSession(str(dest), options, providers=["CPUExecutionProvider"])


def _saved_outputs(session) -> dict[str, str]:
    """Tensor name -> the augmented output that holds it."""
    return {o.name[:-len(_SAVED)]: o.name for o in session.get_outputs() if o.name.endswith(_SAVED)}


def _score(unit: list, nsr: dict[str, float], producers: dict, traced: float = 0.0, local: Optional[float] = None):
    """Noise added between the unit's inputs and its (last node's) outputs, or, where it was
    measured, the unit's own error on the quantized inputs (edgekit.search.local); plus what
    was traced to it."""
    added = _added(unit, nsr, producers)
    if added is None:
        return None
    own, out = added
    if local is not None and len(unit) == 1:
        own = max(own, local)
    sqnr = -10 * float(np.log10(out)) if out > 0 else 999.0
    return NodeSensitivity(tuple(n.name for n in unit), unit[0].op_type, own + traced, sqnr, traced)


def _added(unit: list, nsr: dict[str, float], producers: dict):
    """(NSR of the unit's output minus its inputs', NSR of its output), or None if not measured."""
    outputs = [nsr[o] for o in unit[-1].output if o in nsr]
    if not outputs:
        return None
    out = max(outputs)
    return out - max((_input_nsr(i, nsr, producers) for i in unit[0].input), default=0.0), out


def _traced(kept: list, units: list[list], nsr: dict[str, float], producers: dict) -> dict[str, float]:
    """Unit head name -> the noise that kept float nodes downstream of it gained."""
    heads = {n.name: unit[0].name for unit in units for n in unit}
    blame: dict[str, float] = {}
    for node in kept:
        added = _added([node], nsr, producers)
        if added is None or added[0] <= _MIN_SCORE:
            continue
        for head in _upstream(node, heads, producers, _TRACE_DEPTH):
            blame[head] = blame.get(head, 0.0) + added[0]
    return blame


def _upstream(node, heads: dict[str, str], producers: dict, depth: int) -> set[str]:
    """The nearest quantized units feeding `node`, through at most `depth` float nodes."""
    found: set[str] = set()
    for tensor in node.input:
        source = producers.get(tensor)
        if source is None:
            continue  # a graph input or a weight
        if source.name in heads:
            found.add(heads[source.name])
        elif depth > 1:
            found |= _upstream(source, heads, producers, depth - 1)
    return found


def _input_nsr(tensor: str, nsr: dict[str, float], producers: dict, depth: int = 3) -> float:
    """The NSR of an input; for one the quantized graph lost, that of its producer's inputs."""
    if tensor in nsr:
        return nsr[tensor]
    source = producers.get(tensor)
    if source is None or depth == 0:
        return 0.0  # a graph input or a weight
    return max((_input_nsr(i, nsr, producers, depth - 1) for i in source.input), default=0.0)
