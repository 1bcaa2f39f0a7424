"""The language-model toolchain: a causal LM (a Hugging Face folder or a .gguf file) exported
once to an FP32 ONNX decoder with a KV cache (the baseline and the reference), every recipe
applied to that file, and each measured with and without the cache as the profile's [lm]
section asks. A profile with an [lm] section picks it (edgekit.toolchains.toolchain_for).

Its models are ONNX files that carry the metadata `edgekit.lm` (edgekit.device.lm), their
weights in a .data file and their tokenizer.json beside them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from edgekit.calibration_record import InputRecord, ModelRecord
from edgekit.datasets import Dataset, InputSpec
from edgekit.errors import ConfigError, DataError, ModelError
from edgekit.progress import OnStep, notify
from edgekit.recipes import KV_CACHE, Recipe
from edgekit.toolchains.base import Toolchain, message, model_sha256

__all__ = ["LMToolchain"]

BLOCK_SIZES = (16, 32, 64, 128)
CURVE_POINTS = 4  # context lengths a device measures cache against recompute at: 1/8, 1/4, 1/2, all of the profile's


class LMToolchain(Toolchain):
    name = "lm"
    runtime = "onnxruntime"
    suffix = ".onnx"
    label = "language model"

    def __init__(self) -> None:
        self._made: dict = {}  # _made_key -> a kept copy of the file quantize wrote (None: none kept)
        self._runs: set = set()  # (path, size, mtime) of the models check() saw onnxruntime run
        self._kept: Optional[Path] = None  # the folder of those copies

    # -- a model ------------------------------------------------------------------------

    def claims(self, path) -> bool:
        """An .onnx file that says it is a language model (its `edgekit.lm` metadata), or what the
        export takes (a Hugging Face folder, a .gguf file): quantize needs no target."""
        path = Path(str(path))
        if path.is_dir():
            return (path / "config.json").is_file()
        if path.suffix == ".gguf":
            return path.is_file()
        return path.suffix == self.suffix and path.is_file() and bool(self._meta(path, quiet=True))

    def load(self, spec, *, workdir: Path, example_data: Optional[Dataset] = None,
             on_step: Optional[OnStep] = None) -> Path:
        from edgekit.toolchains.lm.export import export, source_kind

        if source_kind(spec) == "onnx":
            return self.check(Path(str(spec)).expanduser())
        notify(on_step, "convert", "to ONNX with a KV cache")
        return export(spec, Path(workdir))  # checked on the way (edgekit.toolchains.lm.verify)

    def check(self, path: Path) -> Path:
        """`path` if it is a language model of edgekit that onnxruntime runs, else ModelError."""
        from edgekit.toolchains.lm.verify import check_runs

        path = Path(path)
        vocab = self._meta(path)["vocab"]  # ModelError for a folder, a missing file or another model
        stat = path.stat()
        seen = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if seen not in self._runs:  # once a process: calibrate's load, then its evaluate, check one model
            check_runs(path, vocab)
            self._runs.add(seen)
        return path

    def model_context(self, path: Path) -> Optional[int]:
        """The longest sequence the model runs at (its position table), None if it does not say."""
        return self._meta(Path(path)).get("context")

    def _meta(self, path: Path, quiet: bool = False) -> dict:
        import onnx

        from edgekit.toolchains.lm.graph import lm_meta_of

        if path.is_dir() and not quiet:
            raise ModelError(f"model {path}: a model folder; this step takes its ONNX export",
                             hint=f"make it with: edgekit quantize {path} -p fp32 -o model.onnx")
        try:
            meta = lm_meta_of(onnx.load(str(path), load_external_data=False))
        except Exception as exc:  # protobuf's errors: not a model
            if quiet:
                return {}
            raise ModelError(f"model {path}: not a readable ONNX file ({message(exc)})") from exc
        if not meta and not quiet:
            raise ModelError(f"model {path}: an ONNX model, but not a language model of edgekit (no 'edgekit.lm' "
                             "metadata)", hint="give the Hugging Face folder or .gguf file to export it")
        return meta

    def inputs(self, path: Path) -> list[InputSpec]:
        return [InputSpec("input_ids", "int64", (None, None))]

    def first_output(self, path: Path) -> InputSpec:
        return InputSpec("logits", "float32", (None, None, self._meta(Path(path))["vocab"]))

    def precision(self, path: Path) -> str:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        bits = [a.i for n in proto.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"]
        if bits:
            return "int4-block" if min(bits) == 4 else "int8-block"
        if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
            return "fp16"
        return "fp32"

    def files(self, path: Path) -> list[Path]:
        from edgekit.device.lm import TOKENIZER

        path = Path(path)
        extra = [path.parent / f for f in self._meta(path).get("data") or []]
        tokenizer = path.parent / TOKENIZER
        return [path, *extra, *([tokenizer] if tokenizer.is_file() else [])]

    def size_mb(self, path: Path) -> float:
        from edgekit.toolchains.onnx.models import model_size_mb

        return model_size_mb(Path(path))

    def requirements(self, path: Path) -> dict:
        from edgekit.toolchains.onnx.models import onnx_requirements

        return onnx_requirements(Path(path))

    # -- data ---------------------------------------------------------------------------

    def metric(self, data: Dataset) -> str:
        return "perplexity"

    def model_data(self, model: Path, data: Dataset, role: str, profile=None) -> Dataset:
        """`data` as token windows for `model`: at most the profile's context long, and at most
        the model's (a target whose context the model cannot run at is refused here first)."""
        from edgekit.toolchains.lm.evaldata import check_vocabulary, token_windows, window_length

        refusal = self.model_refusal(Path(model), profile, what=f"model {model}")
        if refusal:
            raise ConfigError(f"target {profile.name}: {refusal}")
        meta = self._meta(Path(model))
        context = meta.get("context")
        windows = token_windows(Path(model), data, role, window_length(profile, context))
        length = windows.arrays["input_ids"].shape[1]
        if context and length > context:  # windows given as token arrays
            raise DataError(f"{role} {data.path}: windows of {length} tokens, and model {model} runs at {context} "
                            "at most: give shorter windows")
        check_vocabulary(windows.arrays["input_ids"], meta.get("vocab"), f"{role} {data.path}", model)
        return windows

    def model_refusal(self, model: Path, profile, what: str = "it") -> Optional[str]:
        """A target whose [lm] context is longer than the model runs at (its rotary table's rows)."""
        lm = getattr(profile, "lm", None)
        context = self.model_context(model) if lm is not None else None
        if context and lm.context > context:
            return (f"[lm] context = {lm.context} is longer than {what} runs at ({context} tokens, its "
                    f"position table); give context <= {context}")
        return None

    def prepare_eval(self, data: Dataset, model: Path, dest: Path, *, reference: Optional[Path] = None,
                     samples: Optional[int] = None) -> Path:
        from edgekit.toolchains.lm.evaldata import token_windows, window_length, write_eval

        data = token_windows(Path(model), data, "eval data", window_length(None, self.model_context(model)))
        return write_eval(data, Path(model), Path(dest), reference, samples, self._meta(Path(model))["vocab"])

    def remake_reference(self, source: str, workdir: Path) -> Optional[Path]:
        """The FP32 export again, from the source a calibration record names."""
        return self.load(source, workdir=workdir)

    def measure_options(self, profile, recipe: Recipe) -> dict:
        lm = profile.lm
        mode = recipe.kv_cache or ("recompute" if lm.kv_cache == "recompute" else "cache")
        return {"lm": {"context": lm.context, "prompt_tokens": lm.prompt_tokens,
                       "generate_tokens": lm.generate_tokens, "kv_cache": mode}}

    def device_measure_options(self, profile, recipe: Recipe) -> dict:
        """A device also measures cache against recompute at CURVE_POINTS context lengths up to
        the profile's (the fleet report's curve); calibrate leaves it out, being per candidate."""
        options = self.measure_options(profile, recipe)
        return {"lm": {**options["lm"], "curve_points": CURVE_POINTS}}

    def quality_options(self, profile, recipe: Recipe) -> dict:
        """Perplexity and agreement alone: a generation would only be timed, and dropped."""
        options = self.measure_options(profile, recipe)
        return {"lm": {**options["lm"], "quality_only": True}}

    # -- recipes ------------------------------------------------------------------------

    def sweep(self, profile, exclude: tuple[str, ...] = (), include: tuple[str, ...] = ()) -> list[Recipe]:
        """FP32 first (the baseline), then FP16 and the block recipes the profile allows, each
        in the cache modes its [lm] section leaves open (auto: both)."""
        from edgekit.toolchains.lm.quantize import DEFAULT_ALGORITHM, INT4_CANDIDATES

        if exclude or include:
            raise ConfigError("--exclude and --include select nodes of one-pass models; a language model's "
                              "recipes keep the head and embedding at 8 bits themselves")
        self._require_lm(profile)
        allowed = set(profile.precisions)
        plain = [Recipe(precision=p) for p in ("fp32", "fp16") if p == "fp32" or p in allowed]
        blocks = [Recipe(precision=p, algorithm=m, block_size=32) for p in DEFAULT_ALGORITHM if p in allowed
                  for m in (INT4_CANDIDATES if p == "int4-block" else (DEFAULT_ALGORITHM[p],))]
        modes = KV_CACHE if profile.lm.kv_cache == "auto" else (profile.lm.kv_cache,)
        return [r.model_copy(update={"kv_cache": mode}) for r in plain + blocks for mode in modes]

    def _require_lm(self, profile) -> None:
        if profile is not None and profile.lm is None:
            raise ConfigError(f"target {profile.name} has no [lm] section: it does not describe a language model "
                              "workload (context, prompt_tokens, generate_tokens)")

    def check_recipe(self, recipe: Recipe) -> None:
        from edgekit.toolchains.lm.quantize import BLOCK_ALGORITHMS

        if recipe.precision not in ("fp32", "fp16", *BLOCK_ALGORITHMS):
            raise ConfigError(f"--precision {recipe.precision}: a language model takes fp32, fp16, "
                              f"{' or '.join(BLOCK_ALGORITHMS)}")
        if recipe.algorithm is not None and recipe.algorithm not in BLOCK_ALGORITHMS.get(recipe.precision, ()):
            offered = ", ".join(BLOCK_ALGORITHMS.get(recipe.precision, ())) or "none"
            raise ConfigError(f"--algorithm {recipe.algorithm}: {recipe.precision} offers {offered}")
        if recipe.block_size is not None and recipe.block_size not in BLOCK_SIZES:
            raise ConfigError(f"--block-size {recipe.block_size}: give one of {', '.join(map(str, BLOCK_SIZES))}")
        if recipe.per_channel or recipe.reduce_range or recipe.exclude or recipe.include:
            raise ConfigError("--per-channel, --reduce-range, --exclude and --include apply to one-pass models, "
                              "not to a language model's block recipes")

    def quantize(self, model: Path, recipe: Recipe, out: Path, *, calibration: Optional[Dataset] = None,
                 max_samples: int = 512, on_step: Optional[OnStep] = None) -> Path:
        """A recipe is made once per process: the same recipe on the same export (for the other
        cache mode, or for another target: the file does not depend on the target) is linked
        from the copy kept then, not made again."""
        from edgekit.errors import QuantizeError
        from edgekit.toolchains.lm.quantize import quantize_lm

        self.check_recipe(recipe)
        out = Path(out)
        windows = self._calibration_windows(Path(model), recipe, calibration)
        key = _made_key(Path(model), recipe, calibration if windows is not None else None)
        kept = self._made.get(key)
        if kept is not None and kept.is_file():
            return self._link(kept, out)
        notify(on_step, "quantize", recipe.id)
        try:
            quantize_lm(Path(model), recipe, out, calibration=windows)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise QuantizeError(f"recipe {recipe.id} failed on {model}: {message(exc)}") from exc
        self._made[key] = self._keep(out, len(self._made))
        return out

    def _calibration_windows(self, model: Path, recipe: Recipe, calibration: Optional[Dataset]):
        """The calibration text as token windows, for the algorithms that measure on it (None for
        others, and for those that only use it when given: WEIGHTED)."""
        from edgekit.toolchains.lm.evaldata import token_windows, window_length
        from edgekit.toolchains.lm.quantize import CALIBRATED, DEFAULT_ALGORITHM, WEIGHTED

        algorithm = recipe.algorithm or DEFAULT_ALGORITHM.get(recipe.precision)
        if algorithm not in CALIBRATED + WEIGHTED or (calibration is None and algorithm not in CALIBRATED):
            return None
        if calibration is None:
            raise ConfigError(f"--algorithm {recipe.algorithm} measures on calibration text which offsets to keep: "
                              "pass --calibration TEXT (.txt, .jsonl or a text data set)")
        length = window_length(None, self.model_context(model))
        return token_windows(model, calibration, "calibration data", length).arrays["input_ids"]

    def _keep(self, made: Path, index: int) -> Optional[Path]:
        """Hard links to a made model's files in a folder of this process (removed at exit), so
        that they outlive the calibration folder they were made in; None where links fail."""
        import atexit
        import tempfile

        if self._kept is None:
            self._kept = Path(tempfile.mkdtemp(prefix="edgekit-lm-made-"))
            atexit.register(shutil.rmtree, self._kept, True)
        folder = self._kept / str(index)
        folder.mkdir()
        try:
            for f in self.files(made):
                os.link(f, folder / f.name)
        except OSError:  # another file system: keep nothing
            return None
        return folder / made.name

    def _link(self, kept: Path, out: Path) -> Path:
        """`kept`'s files into out's folder: the graph as `out`, its .data and tokenizer under their
        own names (the graph names its .data file)."""
        for f in self.files(kept):
            dest = out if f == kept else out.parent / f.name
            if dest.exists():
                if os.path.samefile(dest, f):
                    continue
                dest.unlink()
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, dest)
            except OSError:
                shutil.copyfile(f, dest)
        return out

    # -- records ------------------------------------------------------------------------

    def source_record(self, spec, fp32: Path, inputs: list[InputSpec]) -> ModelRecord:
        from edgekit.toolchains.lm.export import source_kind

        source, kind = Path(str(spec)).expanduser(), source_kind(spec)
        specs = [InputRecord.of(i) for i in inputs]
        converted = {"format": "onnx", "converter": "onnxruntime-genai model builder", "sha256": model_sha256(fp32),
                     "size_mb": round(self.size_mb(fp32), 6), "inputs": specs}
        return ModelRecord(path=str(spec), sha256=model_sha256(source) if source.is_file() else None, format=kind,
                           inputs=specs, **({"converted": converted} if kind != "onnx" else {}))

    def versions(self) -> dict:
        from edgekit.machine import versions

        return versions("onnxruntime", "onnxruntime-genai", "onnx", "transformers", "tokenizers", "numpy")


def _made_key(model: Path, recipe: Recipe, calibration: Optional[Dataset] = None) -> tuple:
    """What a quantized file depends on: the export (its path, size and time), the recipe less
    its cache mode (how the model runs, not its file) and the calibration text where the
    algorithm reads it."""
    stat = model.stat()
    return (str(model.resolve()), stat.st_size, stat.st_mtime_ns, recipe.model_copy(update={"kv_cache": None}),
            calibration.sha256 if calibration is not None else None)
