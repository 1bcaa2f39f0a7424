"""The toolchain seam: one table picks ONNX or TFLite from a profile or a model file, every
toolchain offers the whole interface, and no module outside edgekit/toolchains and
edgekit/device branches on a runtime's name or a model file's suffix."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from helpers.paths import EXAMPLE_ONNX, REPO
from edgekit.errors import ConfigError
from edgekit.targets import list_profiles
from edgekit.toolchains import (DEFAULT, TOOLCHAINS, check_output, model_suffixes, toolchain_for, toolchain_for_model,
                                toolchain_of)
from edgekit.toolchains.base import Toolchain


def test_every_toolchain_implements_the_interface_and_serves_its_runtime():
    for name, toolchain in TOOLCHAINS.items():
        assert isinstance(toolchain, Toolchain) and not inspect.isabstract(type(toolchain))
        assert toolchain.name == name and toolchain.runtime in TOOLCHAINS
        assert toolchain.suffix.startswith(".") and toolchain.label
    # one toolchain per runtime, plus language models: ONNX files that say so
    assert set(model_suffixes()) == {".onnx", ".tflite"} and TOOLCHAINS["lm"].runtime == "onnxruntime"


def test_the_runtimes_a_profile_may_name_are_the_tables():
    """Profiles stay below the toolchains (the fleet reads them too), so they list the names
    themselves: a new runtime is a toolchain, a line in TOOLCHAINS and its name in Profile.runtime."""
    from typing import get_args

    from edgekit.targets import Profile

    assert set(get_args(Profile.model_fields["runtime"].annotation)) == {t.runtime for t in TOOLCHAINS.values()}


def test_a_profile_picks_the_toolchain_of_its_runtime():
    for _, profile in list_profiles():
        toolchain = toolchain_for(profile)
        assert toolchain.runtime == profile.runtime and (toolchain is TOOLCHAINS["lm"]) == (profile.lm is not None)
        recipes = toolchain.sweep(profile)
        assert recipes and {r.precision for r in recipes} <= set(profile.precisions) | {"fp32"}


def test_a_model_file_picks_by_its_suffix_and_anything_else_is_onnx():
    assert toolchain_of("m.onnx") is TOOLCHAINS["onnxruntime"]
    assert toolchain_of("dir/m.tflite") is TOOLCHAINS["tflite"]
    assert toolchain_of("m.pt2") is None and toolchain_of("pkg.mod:build") is None
    assert toolchain_for_model("m.pt2") is DEFAULT and toolchain_for_model("pkg.mod:build") is DEFAULT
    assert toolchain_for_model("m.pt2", Path("q.tflite")) is TOOLCHAINS["tflite"]  # --out asks for TFLite
    assert toolchain_for_model("m.onnx", Path("q.tflite")) is TOOLCHAINS["tflite"]


def test_the_output_file_must_be_of_the_toolchains_kind():
    from edgekit.targets import load_profile

    onnx, tflite = TOOLCHAINS["onnxruntime"], TOOLCHAINS["tflite"]
    check_output(onnx, Path("q.bin"))  # ONNX may take any name ...
    check_output(onnx, Path("q.tflite"))  # ... when no target says otherwise
    with pytest.raises(ConfigError, match=r"--out q\.tflite: target host-cpu runs onnxruntime; write a \.onnx file"):
        check_output(onnx, Path("q.tflite"), load_profile("host-cpu"))
    with pytest.raises(ConfigError, match=r"--out q\.onnx: a TFLite model is written to a \.tflite file"):
        check_output(tflite, Path("q.onnx"))


def test_the_onnx_toolchain_describes_a_model():
    onnx = TOOLCHAINS["onnxruntime"]
    assert onnx.check(EXAMPLE_ONNX) == EXAMPLE_ONNX
    assert [i.name for i in onnx.inputs(EXAMPLE_ONNX)] == ["input"]
    assert onnx.first_output(EXAMPLE_ONNX).shape[-1] == 10
    assert onnx.precision(EXAMPLE_ONNX) == "fp32" and onnx.files(EXAMPLE_ONNX) == [EXAMPLE_ONNX]
    assert set(onnx.requirements(EXAMPLE_ONNX)) == {"ir_version", "opsets"}


# -- the acceptance rule: runtime names and model suffixes are compared in one place ----------

_RUNTIME_WORDS = set(TOOLCHAINS) | set(model_suffixes())
_OWNERS = ("edgekit/toolchains/", "edgekit/device/")


def _compared_words(path: Path) -> list[tuple[int, str]]:
    """(line, word) of every comparison (==, !=, in, not in) with a runtime name or suffix as one side."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            words = [s.value for s in sides if isinstance(s, ast.Constant) and s.value in _RUNTIME_WORDS]
            words += [e.value for s in sides if isinstance(s, (ast.Tuple, ast.List, ast.Set)) for e in s.elts
                      if isinstance(e, ast.Constant) and e.value in _RUNTIME_WORDS]
            found += [(node.lineno, w) for w in words]
    return found


def test_no_module_outside_the_toolchains_and_the_device_compares_a_runtime():
    offenders = []
    for path in sorted((REPO / "edgekit").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if not rel.startswith(_OWNERS):
            offenders += [f"{rel}:{line}: {word!r}" for line, word in _compared_words(path)]
    assert not offenders, "branch on the toolchain (edgekit.toolchains) instead:\n" + "\n".join(offenders)


def test_the_rule_finds_a_comparison(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text('if profile.runtime == "tflite":\n    pass\nok = path.suffix in (".onnx", ".pt2")\n')
    assert _compared_words(sample) == [(1, "tflite"), (3, ".onnx")]
