"""The graph every quantizing recipe starts from, and what a recipe quantized of it.

    prepare(model)              (path, nodes, why pre-processing failed): the prepared graph,
                                made once per model file and process
    weight_coverage(src, out)   how many weight tensors `out` quantized, and their share of bytes
    check_applicable(...)       NotApplicable when a recipe quantized nothing or grew the model

Preparation: a third-party export (Paddle, TF converters) may hold its weights in ``Constant``
nodes, and even reach a MatMul weight through a constant subgraph (a Transpose of a constant).
The quantizers look for initializers, so such a model was "quantized" to nothing. ONNX
Runtime's basic graph optimisation, written out (``optimized_model_filepath``), turns Constant
nodes into initializers and folds constant subgraphs; it runs first when the graph has Constant
nodes. Then ONNX Runtime's quant_pre_process (symbolic shape inference, basic optimisation,
ONNX shape inference); when symbolic shape inference gives up, it is tried again without it,
and when that fails too the folded model is used as it is. Every node gets a name (include and
exclude reach ORT as node names). The result is cached for the process, so a calibrate run
prepares a model once and reports a failed pre-processing once (one warning, with the reason).

Weight tensors are the float initializers of rank 2 or more (matrices, convolution kernels,
embedding tables); a quantized one no longer exists in float under its name.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

from edgekit.errors import NotApplicable

__all__ = ["prepare", "first_report", "weight_coverage", "check_applicable", "stamp", "notes", "quiet_ort", "name_nodes",
           "NOTES_KEY"]

NOTES_KEY = "edgekit.quantize"  # model metadata: what a recipe could not do as asked, as JSON
_cache: dict = {}
_dir: list[Path] = []
_reported: set = set()


def prepare(model: Path):
    """(prepared path, its nodes, why pre-processing failed or None), made once per model file."""
    model = Path(model).resolve()
    stat = model.stat()
    key = (str(model), stat.st_mtime_ns, stat.st_size)
    if key not in _cache:
        dest = _workdir() / f"{len(_cache)}-{model.stem}"
        dest.mkdir()
        _cache[key] = _prepare(model, dest)
    return _cache[key]


def first_report(model: Path) -> bool:
    """True the first time it is asked about `model` in this process (say a failure once)."""
    key = str(Path(model).resolve())
    if key in _reported:
        return False
    _reported.add(key)
    return True


def _workdir() -> Path:
    if not _dir:
        _dir.append(Path(tempfile.mkdtemp(prefix="edgekit-prepared-")))
        atexit.register(shutil.rmtree, _dir[0], True)
    return _dir[0]


def _prepare(model: Path, dest: Path):
    import onnx


    source, failures = model, []
    if any(n.op_type == "Constant" for n in onnx.load(str(model), load_external_data=False).graph.node):
        try:
            source = fold(model, dest / "folded.onnx")
        except Exception as exc:  # onnxruntime cannot load it here (a custom op): quantize it unfolded
            failures.append(f"folding Constant nodes: {_reason(exc)}")
    for options in ({}, {"skip_symbolic_shape": True}):
        try:
            with quiet_ort():
                _pre_process(source, dest / "pre.onnx", options)
            source = dest / "pre.onnx"
            break
        except Exception as exc:  # symbolic shape inference gives up on some graphs
            failures.append(_reason(exc))
    error = None
    if failures:
        error = failures[0] + ("; pre-processed without symbolic shape inference" if len(failures) == 1
                               else "; without symbolic shape inference too, so the graph is quantized as folded")
    proto = onnx.load(str(source))
    if name_nodes(proto.graph.node):
        onnx.save(proto, str(dest / "named.onnx"))
        source = dest / "named.onnx"
    return source, list(proto.graph.node), error


def fold(model: Path, dest: Path) -> Path:
    """ONNX Runtime's basic optimisation written out: Constant nodes become initializers and
    constant subgraphs are folded (ONNX ops only, so every runtime still reads it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dest)
    options.log_severity_level = 3
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return dest


def _pre_process(model: Path, dest: Path, options: dict) -> None:
    import os

    from onnxruntime.quantization.shape_inference import quant_pre_process

    before = os.getcwd()
    os.chdir(dest.parent)  # symbolic shape inference drops a debug file in the cwd on failure
    try:
        quant_pre_process(str(model), str(dest), **options)
    finally:
        os.chdir(before)


def weights(proto) -> dict[str, int]:
    """Float weight tensors (rank >= 2) of a model: name -> bytes."""
    import numpy as np
    from onnx import TensorProto

    sizes = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.DOUBLE: 8}
    return {t.name: int(np.prod(t.dims)) * sizes[t.data_type] for t in proto.graph.initializer
            if t.data_type in sizes and len(t.dims) >= 2}


def weight_coverage(source: Path, quantized_proto) -> dict:
    """{"quantized": n, "weights": of n, "share": of the weight bytes} of quantized_proto against source."""
    import onnx

    before = weights(onnx.load(str(source)))
    left = weights(quantized_proto)
    done = {name: size for name, size in before.items() if left.get(name) != size}
    total = sum(before.values())
    return {"quantized": len(done), "weights": len(before), "share": round(sum(done.values()) / total, 4) if total else 0.0}


def check_applicable(recipe_id: str, coverage: dict, fp32_bytes: int, out_bytes: int, why_none: str,
                     min_share: float = 0.0) -> None:
    """NotApplicable when the recipe quantized no weight (or less than min_share of the weight
    bytes), or its model is not smaller than FP32."""
    if coverage["quantized"] == 0:
        raise NotApplicable(f"{recipe_id} quantizes no weight of this model: {why_none}")
    if coverage["share"] < min_share:
        raise NotApplicable(f"{recipe_id} quantizes only {coverage['share']:.0%} of this model's weight bytes "
                            f"({coverage['quantized']} of {coverage['weights']} weights): {why_none}")
    if out_bytes >= fp32_bytes:
        raise NotApplicable(f"{recipe_id} quantized {coverage['quantized']} of {coverage['weights']} weights but "
                            f"its model ({out_bytes} bytes) is not smaller than FP32 ({fp32_bytes} bytes)")


def stamp(proto, notes: dict) -> None:
    """Record notes (a failed pre-processing, what was kept in float) in the model's metadata,
    when there are any (an ordinary model gains no bytes)."""
    import onnx

    if notes:
        props = {p.key: p.value for p in proto.metadata_props}
        props[NOTES_KEY] = json.dumps(notes)
        onnx.helper.set_model_props(proto, props)


def notes(proto) -> dict:
    props = {p.key: p.value for p in proto.metadata_props}
    return json.loads(props[NOTES_KEY]) if NOTES_KEY in props else {}


def _reason(exc: BaseException) -> str:
    """One readable line; onnxruntime's symbolic shape inference fails on bare asserts."""
    from edgekit.words import first_line

    if isinstance(exc, AssertionError) and not str(exc).strip():
        return "symbolic shape inference could not follow the graph (an assertion in onnxruntime's shape inference)"
    return first_line(exc)


@contextlib.contextmanager
def quiet_ort():
    """onnxruntime.quantization prints progress to stdout and logs on the root logger."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)  # ORT's weight-only module calls basicConfig on import
    root.setLevel(logging.ERROR)
    disabled = logging.root.manager.disable  # this may be nested (pre-processing inside a recipe)
    logging.disable(max(disabled, logging.WARNING))  # loggers with their own handlers too (the weight-only algorithms')
    try:  # numpy's warnings from inside ORT's calibrators: the candidate's fidelity tells the outcome
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)  # torch, under ORT's HQQ
            yield
    finally:
        logging.disable(disabled)
        root.setLevel(level)
        root.handlers[:] = handlers


def name_nodes(nodes) -> bool:
    """Give unnamed nodes unique names, since include and exclude reach ORT as node names."""
    taken = {n.name for n in nodes}
    unnamed = [(i, n) for i, n in enumerate(nodes) if not n.name]
    for i, node in unnamed:
        name = f"{node.op_type}_{i}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
    return bool(unnamed)
