"""Can a device's (older) onnxruntime run this ONNX model? If not, why not.

Devices lag the host: Raspberry Pi OS Bullseye's Python 3.9 gets onnxruntime 1.19 at the
newest, while the host quantizes with whatever is current. A profile names the device's
version (``runtime_version = "1.19"``); calibrate, quantize and package ask
``target_refusal`` before they offer a model for that target. Two kinds of rule, both data:

* what a version reads at all: the model's IR version and each imported opset against the
  highest that version loads (``LIMITS``);
* kernels a version lacks although the opset has the operator (``KERNEL_GAPS``).

Only verified gaps are listed, so a model that passes may still fail on the device for a
reason not known here: the canary gate catches those with the device's own error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional

from edgekit.errors import ConfigError

__all__ = ["LIMITS", "KERNEL_GAPS", "CONTRIB_GAPS", "parse_version", "runtime_gaps", "runtime_refusal", "target_refusal",
           "check_target"]

# (first version, highest ai.onnx opset, highest ai.onnx.ml opset, highest IR version) it loads.
# Rows 1.0 to 1.17 are ONNX Runtime's documented compatibility table (docs/reference/compatibility.md,
# "ONNX opset support", published at onnxruntime.ai/docs/reference/compatibility.html; 1.17.3 measured
# the same). Rows from 1.18 on were measured by loading probe models (one Relu, the opset or IR version raised one step at
# a time) in onnxruntime 1.18.1, 1.19.2, 1.20.1, 1.21.1, 1.22.1, 1.23.2, 1.24.1 and 1.25.0, because
# the table stops at 1.20 and its ML column is wrong from 1.18: those versions load ai.onnx.ml 5
# (which every INT8 model from onnxruntime 1.32's quantizer imports) and refuse 6; 1.17.3 refuses 5.
# Versions newer than the last row are assumed to load what the host's onnxruntime writes.
LIMITS: tuple[tuple[tuple[int, int], int, int, int], ...] = (
    ((1, 0), 11, 2, 6),
    ((1, 3), 12, 2, 7),
    ((1, 6), 13, 2, 7),
    ((1, 8), 14, 2, 7),
    ((1, 9), 15, 2, 8),
    ((1, 11), 16, 2, 8),
    ((1, 12), 17, 3, 8),
    ((1, 14), 18, 3, 8),
    ((1, 15), 19, 3, 8),
    ((1, 16), 19, 3, 9),
    ((1, 17), 20, 4, 9),
    ((1, 18), 21, 5, 10),
    ((1, 21), 22, 5, 10),
    ((1, 23), 23, 5, 11),
    ((1, 24), 25, 5, 13),
    ((1, 25), 26, 5, 13),
)

# (op type, first version with the kernel, which use of it lacks a kernel before, the remedy, test of
# a node given its input element types). ConvInteger: the CPU kernel took uint8 x uint8 only until
# onnxruntime PR #26585 added int8 inputs. quantize_dynamic writes uint8 activations x int8 weights, so every
# dynamic-INT8 Conv needs it. Measured with the example digits model quantized int8-dynamic by
# onnxruntime 1.32 (per-tensor, per-channel, reduce-range): 1.18.1, 1.19.2, 1.20.1, 1.21.1, 1.22.1
# and 1.23.2 refuse to load it ("Could not find an implementation for ConvInteger(10) node"),
# 1.24.1 and 1.25.0 run it. MatMulInteger with int8 weights loads in all of them.
KERNEL_GAPS: tuple[tuple[str, tuple[int, int], str, str, Callable[[list[Optional[int]]], bool]], ...] = (
    ("ConvInteger", (1, 24), "on int8 inputs or weights",
     "quantize int8-static, or keep Conv in float (--exclude Conv)",
     lambda types: 3 in types[:2]),  # 3 is onnx.TensorProto.INT8
)

# The same for the com.microsoft ops that the weight-only recipes write, tested on the node itself.
# onnxruntime 1.19 (the device venv of tests/test_onnx_compat.py) refuses both, measured. The
# first versions with them are from onnxruntime's pull requests, not measured here:
# GatherBlockQuantized's CPU kernel is #21630 (merged August 2024, in 1.20); 8-bit MatMulNBits on
# the CPU is #24384 and #24491 (labelled release:1.22.0). 4-bit MatMulNBits dates from 1.17.
CONTRIB_GAPS: tuple[tuple[str, tuple[int, int], str, str, Callable], ...] = (
    ("MatMulNBits", (1, 22), "for 8-bit weights", "use int4-block or int8-token",
     lambda node: any(a.name == "bits" and a.i == 8 for a in node.attribute)),
    ("MatMulNBits", (1, 17), "", "use int8-token", lambda node: True),
    ("GatherBlockQuantized", (1, 20), "", "use int8-block or int8-token (INT8 embedding rows)", lambda node: True),
)

_VERSION = re.compile(r"^\s*(?:(?P<name>onnxruntime(?:-[a-z]+)?)\s*(?:==|\s)\s*)?(?P<version>\d+\.\d+(?:\.\d+)*)\s*$")


def parse_version(text: str) -> tuple[tuple[int, int], str]:
    """((major, minor), as written) from '1.19', 'onnxruntime 1.19.2' or 'onnxruntime==1.19.2'."""
    match = _VERSION.match(text.lower())
    if match is None:
        raise ConfigError(f"runtime_version '{text}': for an onnxruntime target write the device's "
                          "onnxruntime version, such as '1.19' or 'onnxruntime 1.19.2'")
    major, minor = (int(p) for p in match["version"].split(".")[:2])
    return (major, minor), match["version"]


def _limits(version: tuple[int, int]) -> Optional[tuple[int, int, int]]:
    """The highest (opset, ML opset, IR) that `version` loads; None when newer than the table."""
    if version > LIMITS[-1][0]:
        return None
    rows = [row for row in LIMITS if row[0] <= version] or [LIMITS[0]]
    return rows[-1][1:]


def _element_types(proto) -> dict[str, int]:
    """Element type of every tensor whose type is known, after ONNX shape inference."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto).graph
    except (onnx.shape_inference.InferenceError, ValueError):  # e.g. over 2 GB: the declared types still count
        inferred = proto.graph
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in [*inferred.input, *inferred.value_info, *inferred.output]}
    types.update({t.name: t.data_type for t in proto.graph.initializer})
    return types


def _limit_gaps(proto, version: tuple[int, int]) -> list[str]:
    limits = _limits(version)
    if limits is None:
        return []
    opset, ml, ir = limits
    gaps = []
    if proto.ir_version > ir:
        gaps.append(f"the model's IR version is {proto.ir_version}, above the {ir} it reads (save it with "
                    f"ir_version {ir} at most, or install a newer onnxruntime on the device)")
    highest = {"": opset, "ai.onnx": opset, "ai.onnx.ml": ml}
    for imp in proto.opset_import:
        limit = highest.get(imp.domain)
        if limit is not None and imp.version > limit:
            gaps.append(f"the model imports {imp.domain or 'ai.onnx'} opset {imp.version}, above the {limit} it "
                        f"implements (make it import {limit} at most, or install a newer onnxruntime on the device)")
    return gaps


def _kernel_gaps(proto, version: tuple[int, int]) -> list[str]:
    gaps = []
    for op, since, use, remedy, needs in KERNEL_GAPS:
        if version >= since:
            continue
        nodes = [n for n in proto.graph.node if n.op_type == op and n.domain in ("", "ai.onnx")]
        if not nodes:
            continue
        types = _element_types(proto)
        hits = [n for n in nodes if needs([types.get(i) for i in n.input])]
        if hits:
            count = f"{len(hits)} node{'s' if len(hits) > 1 else ''}, first '{hits[0].name}'"
            gaps.append(f"it has no {op} kernel {use} ({count}) before onnxruntime {since[0]}.{since[1]}; "
                        f"{remedy}, or install onnxruntime {since[0]}.{since[1]} or newer on the device")
    return gaps


def _contrib_gaps(proto, version: tuple[int, int]) -> list[str]:
    gaps = []
    for op, since, use, remedy, needs in CONTRIB_GAPS:
        hits = [n for n in proto.graph.node if n.op_type == op and n.domain == "com.microsoft" and needs(n)]
        if version < since and hits and not any(f"no {op} kernel" in g for g in gaps):
            count = f"{len(hits)} node{'s' if len(hits) > 1 else ''}, first '{hits[0].name}'"
            gaps.append(f"it has no {op} kernel{' ' + use if use else ''} ({count}) before onnxruntime "
                        f"{since[0]}.{since[1]}; {remedy}, or install onnxruntime {since[0]}.{since[1]} or newer "
                        "on the device")
    return gaps


def runtime_gaps(model, runtime_version: str) -> list[str]:
    """Why onnxruntime `runtime_version` cannot run `model` (a path or a ModelProto); [] when it can,
    as far as the rules know. A bad version string is a ConfigError."""
    import onnx

    version, _ = parse_version(runtime_version)
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    return _limit_gaps(proto, version) + _kernel_gaps(proto, version) + _contrib_gaps(proto, version)


def runtime_refusal(model, runtime_version: Optional[str], what: str = "it") -> Optional[str]:
    """'onnxruntime 1.19 cannot run it: ...' or None (also when no version is given)."""
    if not runtime_version:
        return None
    gaps = runtime_gaps(model, runtime_version)
    if not gaps:
        return None
    return f"onnxruntime {parse_version(runtime_version)[1]} cannot run {what}: {'; '.join(gaps)}"


def check_target(profile) -> None:
    """ConfigError naming the profile when its runtime_version is not an onnxruntime version."""
    if profile.runtime == "onnxruntime" and profile.runtime_version:
        try:
            parse_version(profile.runtime_version)
        except ConfigError as exc:
            raise ConfigError(f"target {profile.name}: {exc}") from exc


def target_refusal(model: Path, profile, what: str = "it") -> Optional[str]:
    """runtime_refusal for a target profile; None unless it runs onnxruntime and names its version."""
    if profile.runtime != "onnxruntime" or Path(model).suffix != ".onnx":
        return None
    check_target(profile)
    return runtime_refusal(model, profile.runtime_version, what)
