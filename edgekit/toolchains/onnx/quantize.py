"""Quantize an ONNX model by a Recipe, with onnxruntime.quantization.

    fp32          a copy of the model
    fp16          onnxruntime.transformers.float16, float32 inputs and outputs kept
    int8-dynamic  quantize_dynamic: weights INT8, activations quantized at run time
    int8-static   quantize_static, QDQ format, activations calibrated by minmax (default),
                  entropy or percentile on a calibration data set; range-fragile tensors
                  (attention masks) kept in float (edgekit.toolchains.onnx.static)
    int8-token    per-token dynamic INT8 MatMuls, INT8 embedding rows (.pertoken)
    int8-block    weight-only: MatMul weights in 8-bit blocks (MatMulNBits), INT8 embedding rows
    int4-block    weight-only: MatMul and embedding weights in 4-bit blocks (.weightonly)

The quantizing recipes start from the prepared graph (edgekit.toolchains.onnx.prepare:
Constant-node weights made initializers, constant subgraphs folded, ONNX Runtime's
pre-processing); a pre-processing failure is logged once per model and recorded in the
output model's metadata (``edgekit.weights``, with how many weight tensors, and what share
of the weight bytes, the recipe quantized). A recipe that quantizes no weight, or writes a
model no smaller than FP32, raises NotApplicable. The shape annotations pre-processing adds
are dropped again from the output (ONNX Runtime infers them on load).

Only float tensors are quantized: integer inputs such as token ids and attention masks
pass through as they are; calibration batches are cast to the model's input dtypes.

Exclusion: each ``recipe.exclude`` entry is an op type of the model (``Softmax``) or an
fnmatch pattern of node names (``layer1/ffn/*``); ``recipe.include`` lists the op types to
quantize. An entry that matches nothing is an error rather than a silent no-op. Both reach
ONNX Runtime as node names (unnamed nodes are named first); quantize_dynamic rewrites a
Gemm X as MatMul X_MatMul + Add X_Add, and the names follow.

Bounded memory: see edgekit.toolchains.onnx.static (CHUNK_BATCHES).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Optional


from edgekit.datasets import Dataset
from edgekit.errors import ConfigError, EdgekitError, NotApplicable, QuantizeError
from edgekit.progress import OnStep, notify
from edgekit.recipes import Recipe
from edgekit.toolchains.onnx.models import check_onnx, external_data_files, model_inputs, onnx_requirements
from edgekit.toolchains.onnx.prepare import first_report, prepare, quiet_ort
from edgekit.toolchains.onnx.static import CHUNK_BATCHES, Reader

__all__ = ["quantize", "check_recipe", "prepared", "CHUNK_BATCHES"]

log = logging.getLogger(__name__)
_TRANSFORMER = ("int8-token", "int8-block", "int4-block")  # recipes for MatMul weights and embedding tables
MIN_SHARE = 0.5  # such a recipe covering less of the weight bytes (a CNN's embedding) is not applicable


def quantize(model: Path, recipe: Recipe, out: Path, *, calibration: Optional[Dataset] = None,
             max_samples: int = 512, batch_size: int = 16, on_step: Optional[OnStep] = None) -> Path:
    """Write `model` quantized by `recipe` to `out` (atomically) and return `out`; on_step
    hears of each stage ("quantize": pre-processing, calibration k/n batches, ...)."""
    # absolute paths: pre-processing runs in a temporary working directory
    model, out = check_onnx(Path(model).resolve()), Path(out).resolve()
    _check_recipe(recipe, calibration, max_samples, batch_size)
    if recipe.precision != "fp32" and _half_weights(model):
        raise NotApplicable(f"{recipe.id} quantizes float32 weights, and {model.name} holds float16 ones (an FP16 "
                            "export): give the model's FP32 export")
    if recipe.precision == "int8-static":
        calibration.check(model_inputs(model), role="calibration data")
        _check_per_channel_opset(model, recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgekit-quantize-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        if recipe.precision == "fp32":
            _copy(model, staged)
        else:
            try:
                with quiet_ort():
                    pre_error = _run(model, recipe, staged, Path(tmp), calibration, max_samples, batch_size,
                                     on_step)
            except EdgekitError:
                raise
            except Exception as exc:  # onnxruntime's errors on a model that passed the checker
                raise QuantizeError(f"recipe {recipe.id} failed on {model}: {_reason(exc)}") from exc
            if pre_error and first_report(model):
                log.warning("pre-processing of %s: %s", model.name, pre_error)
        os.replace(staged, out)
    return out


def check_recipe(recipe: Recipe) -> None:
    """ConfigError for a recipe that asks what the ONNX recipes do not offer."""
    if recipe.method and recipe.precision != "int8-static":
        raise ConfigError(f"recipe {recipe.id}: --method applies to --precision int8-static only")
    block = recipe.precision in ("int8-block", "int4-block")
    if (recipe.block_size or recipe.accuracy_level is not None or recipe.algorithm) and not block:
        raise ConfigError(f"recipe {recipe.id}: block size, accuracy level and algorithm apply to "
                          "--precision int8-block and int4-block only")
    if recipe.block_size is not None and (recipe.block_size < 16 or recipe.block_size & (recipe.block_size - 1)):
        raise ConfigError(f"recipe {recipe.id}: block size {recipe.block_size}: a power of two, at least 16")
    if recipe.accuracy_level not in (None, 0, 1, 2, 3, 4):
        raise ConfigError(f"recipe {recipe.id}: accuracy level {recipe.accuracy_level}: 0 to 4")
    from edgekit.toolchains.onnx.weightonly import ALGORITHMS

    if recipe.algorithm not in ALGORITHMS:  # the language models' own (minmax-offset ...)
        offered = ", ".join(a for a in ALGORITHMS if a)
        raise ConfigError(f"--algorithm {recipe.algorithm}: a one-pass model's {recipe.precision} offers {offered}")
    if recipe.algorithm == "hqq" and recipe.precision == "int8-block":
        raise ConfigError(f"recipe {recipe.id}: hqq takes int4-block only (onnxruntime refuses its 8-bit model)")


def _check_recipe(recipe: Recipe, calibration: Optional[Dataset], max_samples: int, batch_size: int) -> None:
    if max_samples < 1 or batch_size < 1:
        raise ConfigError(f"max_samples ({max_samples}) and batch_size ({batch_size}) must be at least 1")
    check_recipe(recipe)
    if recipe.precision == "int8-static" and calibration is None:
        raise ConfigError(f"recipe {recipe.id}: int8-static needs calibration data: pass --calibration DATA")


PER_CHANNEL_OPSET = 13  # DequantizeLinear takes its `axis` from opset 13 on


def _check_per_channel_opset(model: Path, recipe: Recipe) -> None:
    """NotApplicable for per-channel static INT8 of an older export: onnxruntime writes a
    DequantizeLinear with an axis its opset lacks, a model no runtime loads."""
    opset = onnx_requirements(model)["opsets"].get("ai.onnx")
    if recipe.per_channel and opset is not None and opset < PER_CHANNEL_OPSET:
        raise NotApplicable(f"{recipe.id}: per-channel static INT8 needs ai.onnx opset {PER_CHANNEL_OPSET} or newer, "
                            f"and {model.name} imports opset {opset}: export it with opset_version="
                            f"{PER_CHANNEL_OPSET} or newer, or leave out --per-channel")


def _copy(model: Path, dest: Path) -> None:
    if external_data_files(model):  # one self-contained file, like every other recipe's output
        import onnx

        onnx.save(onnx.load(str(model)), str(dest))
    else:
        shutil.copyfile(model, dest)


def _run(model: Path, recipe: Recipe, staged: Path, tmp: Path, calibration: Optional[Dataset],
         max_samples: int, batch_size: int, on_step: Optional[OnStep]) -> Optional[str]:
    """Quantize into `staged`; returns why pre-processing failed, if it did."""
    if recipe.precision == "fp16":
        notify(on_step, "quantize", "to FP16")
        _fp16(model, recipe, staged)
        _finish(staged, model, None)
        return None
    notify(on_step, "quantize", "pre-processing")
    source, nodes, pre_error = prepare(model)
    included, excluded = _selection(nodes, recipe)
    kept = None
    if recipe.precision == "int8-dynamic":
        from onnxruntime.quantization import quantize_dynamic

        notify(on_step, "quantize", "INT8 weights")
        quantize_dynamic(source, staged, nodes_to_quantize=included,
                         nodes_to_exclude=excluded + list(recipe.weight_only),
                         per_channel=recipe.per_channel, reduce_range=recipe.reduce_range)
    elif recipe.precision == "int8-static":
        from edgekit.toolchains.onnx.static import SCAN_BATCHES, quantize_static_robust

        notify(on_step, "quantize", "scanning activation ranges")
        specs = model_inputs(model)
        scan = list(Reader(calibration, specs, 8, 8 * SCAN_BATCHES).feeds())
        reader = Reader(calibration, specs, batch_size, max_samples, on_step)
        kept = quantize_static_robust(source, staged, recipe, included, excluded + list(recipe.weight_only),
                                      reader, scan)
    else:
        _weights(source, recipe, staged, included, excluded, on_step)
    if recipe.weight_only and recipe.precision not in ("int8-block", "int4-block"):
        _block8(staged, recipe)
    _finish(staged, model, pre_error, (recipe, source, kept))
    return pre_error


def _weights(source: Path, recipe: Recipe, staged: Path, included, excluded, on_step) -> None:
    """The per-token and weight-only recipes (they take node names, as include and exclude give them)."""
    names = None if included is None else set(included)
    if recipe.precision == "int8-token":
        from edgekit.toolchains.onnx.pertoken import quantize_per_token

        notify(on_step, "quantize", "per-token INT8")
        quantize_per_token(source, staged, weight_bits=7 if recipe.reduce_range else 8, nodes=names,
                           exclude=set(excluded) | set(recipe.weight_only))
        return
    from edgekit.toolchains.onnx.weightonly import quantize_weights

    bits = 8 if recipe.precision == "int8-block" else 4
    notify(on_step, "quantize", f"{bits}-bit weight blocks")
    quantize_weights(source, staged, bits=bits, block_size=recipe.block_size or 32,
                     symmetric=True if recipe.symmetric is None else recipe.symmetric,
                     accuracy_level=recipe.accuracy_level, algorithm=recipe.algorithm, nodes=names,
                     exclude=excluded, keep_8bit=recipe.weight_only)


def _block8(staged: Path, recipe: Recipe) -> None:
    """Give recipe.weight_only's nodes (kept out of the INT8 pass) 8-bit weight-only blocks."""
    from edgekit.toolchains.onnx.weightonly import quantize_weights

    quantize_weights(staged, staged, bits=8, block_size=recipe.block_size or 32, accuracy_level=4,
                     op_types=("MatMul",), nodes=recipe.weight_only)


def _fp16(model: Path, recipe: Recipe, staged: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    proto = onnx.load(str(model))
    nodes, present = proto.graph.node, {n.op_type for n in proto.graph.node}
    blocked_nodes = _match(nodes, [p for p in recipe.exclude if p not in present], "--exclude")
    blocked_types = {p for p in recipe.exclude if p in present}
    if recipe.include:
        _match(nodes, recipe.include, "--include", types_only=True)
        blocked_types |= present - set(recipe.include)
    converted = convert_float_to_float16(proto, keep_io_types=True, node_block_list=blocked_nodes,
                                         op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | blocked_types))
    # keep_io_types appends its Cast nodes after their consumers: ONNX Runtime does not mind,
    # but the ONNX checker (and so `edgekit package`) requires topological order
    from onnxruntime.transformers.onnx_model import OnnxModel

    OnnxModel(converted).topological_sort()
    onnx.save(converted, str(staged))


def prepared(model: Path, dest: Path = None) -> Path:
    """The graph the quantizing recipes start from (edgekit.toolchains.onnx.prepare; every node
    named): the node names that recipe.exclude refers to. `dest` is not needed any more."""
    return prepare(Path(model))[0]


def _selection(nodes, recipe: Recipe) -> tuple[Optional[list[str]], list[str]]:
    """nodes_to_quantize and nodes_to_exclude for ORT, from recipe.include and recipe.exclude."""
    included = _match(nodes, recipe.include, "--include", types_only=True) if recipe.include else None
    excluded = _match(nodes, recipe.exclude, "--exclude")
    if recipe.precision == "int8-dynamic":
        # quantize_dynamic first rewrites Gemm X into MatMul X_MatMul (+ Add X_Add)
        gemms = {n.name for n in nodes if n.op_type == "Gemm"}
        alias = lambda names: names + [f"{g}_{s}" for g in names if g in gemms for s in ("MatMul", "Add")]  # noqa: E731
        included, excluded = included and alias(included), alias(excluded)
    return included, excluded


def _match(nodes, patterns, flag: str, types_only: bool = False) -> list[str]:
    """Names of the nodes whose op type is a pattern or (unless types_only) whose name matches one."""
    present = sorted({n.op_type for n in nodes})
    names: list[str] = []
    for pattern in patterns:
        matched = [n.name for n in nodes
                   if n.op_type == pattern or (not types_only and n.name and fnmatchcase(n.name, pattern))]
        if not matched:
            what = "an op type" if types_only else "a node name or op type"
            raise ConfigError(f"{flag} '{pattern}' is not {what} of the model (op types: {', '.join(present)})")
        names += [m for m in matched if m not in names]
    return names


def _finish(staged: Path, source: Path, preprocess_error: Optional[str], applied=None) -> None:
    """Drop the shape annotations that pre-processing added; record what was quantized and a
    failed pre-processing; NotApplicable when the recipe quantized nothing (`applied`:
    (recipe, the prepared graph it quantized, what was kept in float))."""
    import onnx

    from edgekit.toolchains.onnx.prepare import check_applicable, stamp, weight_coverage

    kept = {vi.name for vi in onnx.load(str(source), load_external_data=False).graph.value_info}
    proto = onnx.load(str(staged))
    annotations = [vi for vi in proto.graph.value_info if vi.name in kept]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(annotations)
    if applied is not None:
        recipe, prepared_graph, float_kept = applied
        coverage = weight_coverage(prepared_graph, proto)
        stamp(proto, {k: v for k, v in (("preprocess", preprocess_error), ("kept_float", float_kept)) if v})
    onnx.save(proto, str(staged))
    if applied is not None:
        check_applicable(recipe.id, coverage, _bytes(source), staged.stat().st_size, _why_none(recipe),
                         min_share=MIN_SHARE if recipe.precision in _TRANSFORMER else 0.0)


def _bytes(model: Path) -> int:
    from edgekit.toolchains.onnx.models import external_data_files

    return sum(p.stat().st_size for p in [Path(model), *external_data_files(model)])


def _half_weights(model: Path) -> bool:
    """Whether the model's weight matrices are float16 and none float32: onnxruntime's quantizer
    reads float32 weights only (on an FP16 export it quantized nothing, or failed on its Casts)."""
    import onnx
    from onnx import TensorProto

    graph = onnx.load(str(model), load_external_data=False).graph
    matrices = {t.data_type for t in graph.initializer if len(t.dims) >= 2}
    return TensorProto.FLOAT16 in matrices and TensorProto.FLOAT not in matrices


def _why_none(recipe: Recipe) -> str:
    if recipe.precision in _TRANSFORMER:
        return ("the recipe takes the constant weights of MatMul nodes and embedding tables (Gather), large enough "
                "to pay, and this model has none (a Linear layer on 2-D input exports as Gemm, and a Conv is no "
                "MatMul: int8-dynamic and int8-static quantize those)")
    return "it has no node with a constant float weight of an op type the recipe quantizes"


def _reason(exc: BaseException) -> str:
    from edgekit.words import first_line

    return first_line(exc)
