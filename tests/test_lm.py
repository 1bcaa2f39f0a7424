"""Language models through the chain on a tiny random-init Llama (tests/helpers/lmkit.py):
the export and its KV cache against transformers, each recipe, the metrics on the host, the
cache against recompute, text data sets and their errors, and `edgekit generate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import assert_clean_error, run_edgekit
from helpers.lmkit import TINY_TARGET, offset_weights_of, tiny_lm_target

LM_METRICS = ("perplexity", "ppl_increase", "kl_divergence", "top1_agreement", "prefill_tokens_per_s",
              "decode_tokens_per_s", "ttft_ms", "peak_rss_mb", "model_mb", "kv_cache_bytes", "recompute")


def _torch_logits(hf: Path, ids: np.ndarray) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


def _windows(tiny_lm, length: int = 64) -> np.ndarray:
    from edgekit.datasets import load_dataset
    from edgekit.toolchains import TOOLCHAINS

    return TOOLCHAINS["lm"].model_data(tiny_lm.fp32, load_dataset(tiny_lm.eval), "eval data").arrays["input_ids"]


def test_the_export_has_a_kv_cache_and_matches_transformers(tiny_lm):
    from edgekit.device.lm import open_lm

    lm = open_lm(str(tiny_lm.fp32))
    assert (lm.layers, lm.kv_heads, lm.head_dim, lm.vocab) == (2, 2, 16, 512)
    names = {i.name for i in lm.session.get_inputs()} | {o.name for o in lm.session.get_outputs()}
    assert {"past_key_values.1.value", "present.1.value", "logits"} <= names
    ids = _windows(tiny_lm)[0, :40][None]
    want = _torch_logits(tiny_lm.hf, ids)
    whole, _ = lm.forward(ids)
    assert np.abs(whole - want).max() < 1e-3
    # the same logits one token at a time through the cache (a shared buffer sized to 40 tokens)
    state = lm.start(40)
    stepped = np.concatenate([lm.feed(state, ids[:, i:i + 1]) for i in range(40)], axis=1)
    assert np.abs(stepped - want).max() < 1e-3
    assert lm.cache_nbytes(state) == lm.kv_cache_bytes(40) == 2 * 2 * 2 * 16 * 4 * 40
    # single steps (their logits bound to a buffer) and chunks (allocated per call) in turn
    state, cuts = lm.start(40), (0, 1, 8, 9, 10, 40)
    mixed = np.concatenate([lm.feed(state, ids[:, a:b]) for a, b in zip(cuts, cuts[1:])], axis=1)
    assert np.abs(mixed - want).max() < 1e-3


def test_cache_and_recompute_generate_the_same_tokens(tiny_lm):
    from edgekit.device.lm import open_lm

    lm = open_lm(str(tiny_lm.fp32))
    prompt = _windows(tiny_lm)[1, :20]
    cached = lm.generate(prompt, 12, use_cache=True)
    recomputed = lm.generate(prompt, 12, use_cache=False)
    assert cached["tokens"] == recomputed["tokens"] and len(cached["tokens"]) == 12
    assert cached["cache_bytes"] == lm.kv_cache_bytes(32) and recomputed["cache_bytes"] == 0


@pytest.fixture(scope="module")
def recipes(tiny_lm, tmp_path_factory) -> dict:
    """Every recipe the toolchain offers, applied to the tiny export: id -> model file."""
    from edgekit.datasets import load_dataset
    from edgekit.recipes import Recipe
    from edgekit.toolchains import TOOLCHAINS
    from edgekit.toolchains.lm.quantize import BLOCK_ALGORITHMS, CALIBRATED, quantize_lm

    out = tmp_path_factory.mktemp("lm-recipes")
    calib = TOOLCHAINS["lm"].model_data(tiny_lm.fp32, load_dataset(tiny_lm.calib), "calibration data")
    made = {"fp16": quantize_lm(tiny_lm.fp32, Recipe(precision="fp16"), out / "fp16.onnx")}
    for precision, methods in BLOCK_ALGORITHMS.items():
        for method in methods:
            recipe = Recipe(precision=precision, algorithm=method, block_size=32)
            made[recipe.id] = quantize_lm(tiny_lm.fp32, recipe, out / f"{recipe.id}.onnx",
                                          calibration=calib.arrays["input_ids"] if method in CALIBRATED else None)
    return made


def _ops(path: Path) -> dict:
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph
    return {n.name: (n.op_type, {a.name: helper.get_attribute_value(a) for a in n.attribute}) for n in graph.node}


def test_each_recipe_shrinks_the_model_and_keeps_head_and_embedding_at_8_bits(tiny_lm, recipes):
    from edgekit.toolchains import TOOLCHAINS

    lm = TOOLCHAINS["lm"]
    fp32 = lm.size_mb(tiny_lm.fp32)
    sizes = {rid: lm.size_mb(path) for rid, path in recipes.items()}
    assert all(size < 0.6 * fp32 for size in sizes.values()), (fp32, sizes)
    assert sizes["int4-block-b32-rtn"] < sizes["int8-block-b32-rtn"]
    for rid, path in recipes.items():
        assert lm.precision(path) == (rid[:len("int8-block")] if "block" in rid else "fp16")
        assert (path.parent / "tokenizer.json").is_file()
        if "block" not in rid:
            continue
        ops = _ops(path)
        nbits = [attrs for op, attrs in ops.values() if op == "MatMulNBits"]
        assert nbits and all(a["accuracy_level"] == 4 and a["block_size"] == 32 for a in nbits)
        head = [a for op, a in ops.values() if op == "MatMulNBits" and a["N"] == 512]
        gathers = [a for op, a in ops.values() if op == "GatherBlockQuantized"]
        if rid.endswith(("head4", "lean")):  # a 4-bit head and its 8-bit offsets; the embedding reads both tables
            assert sorted(a["bits"] for a in head) == sorted(a["bits"] for a in gathers) == [4, 8]
            continue
        assert [a["bits"] for a in head] == [8]
        assert [a["bits"] for a in gathers] == [8]  # the embedding reads the head's 8-bit table


def test_offset_blocks_come_back_on_their_own_grid(tiny_lm, tmp_path):
    """Weights already on an asymmetric 4-bit grid (what a GGUF Q4_1 file holds) come back
    up to the kernels' int8 activations and the residuals' 4 bits (a few percent of a step),
    whatever the offsets: the recipe's accuracy claim, on weights where integer zero points
    would round."""
    import onnx
    from onnx import numpy_helper

    from edgekit.device.lm import log_softmax, open_lm
    from edgekit.recipes import Recipe
    from edgekit.toolchains.lm.graph import save, lm_meta_of
    from edgekit.toolchains.lm.quantize import quantize_lm

    proto = onnx.load(str(tiny_lm.fp32))
    rng = np.random.default_rng(0)
    for init in proto.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim == 2 and w.shape[0] % 32 == 0 and "lm_head" not in init.name and "embed" not in init.name:
            k, n = w.shape
            step = rng.uniform(0.01, 0.03, (k // 32, 1, n)).astype(np.float32)
            # not a multiple of the step; the block holds 0, as a trained model's blocks do
            low = (-rng.uniform(0.5, 14.5, (k // 32, 1, n)) * step).astype(np.float32)
            codes = rng.integers(0, 16, (k // 32, 32, n))
            codes[:, 0], codes[:, 1] = 0, 15  # a Q4_1 block's minimum and maximum are its own (codes 0 and 15)
            grid = low + codes * step
            init.CopyFrom(numpy_helper.from_array(grid.reshape(k, n).astype(np.float32), init.name))
    gridded = save(proto, tmp_path / "grid" / "model.onnx", lm_meta_of(proto))
    window = _windows(tiny_lm)[2]
    ref = open_lm(str(gridded)).window_logits(window)
    kl, models = {}, {}
    for method in ("minmax-offset", "rtn"):
        models[method] = quantize_lm(gridded, Recipe(precision="int4-block", algorithm=method, block_size=32),
                                     tmp_path / method / "model.onnx")
        got = open_lm(str(models[method])).window_logits(window)
        kl[method] = float((np.exp(log_softmax(ref)) * (log_softmax(ref) - log_softmax(got))).sum(-1).mean())
    assert kl["minmax-offset"] < kl["rtn"] / 5, kl
    # the weights themselves, read back from the model's tables: the grid's up to the residuals' 4 bits
    # (the logits' KL also holds the int8 activations' error, which depends on the tiny model)
    grid = _grid_weights(onnx.load(str(gridded)))
    read = offset_weights_of(models["minmax-offset"])
    assert read.keys() == grid.keys() and len(read) == 8, (read.keys(), grid.keys())
    for name, w in read.items():
        assert np.abs(w - grid[name]).max() < 0.0015, name  # steps of 0.01-0.03: residuals within 1/30 of one


def _grid_weights(proto) -> dict:
    """Projection name -> its weights [K, N], as minmax_offset names them (an input's MatMuls fused)."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    by_input: dict = {}
    for node in proto.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and "lm_head" not in node.input[1]:
            by_input.setdefault(node.input[0], []).append(node)
    return {(ms[0].name + "_fused" if len(ms) > 1 else ms[0].name): np.concatenate([inits[m.input[1]] for m in ms], 1)
            for ms in by_input.values()}


def test_quantized_models_stay_close_to_fp32(tiny_lm, recipes):
    """Teacher-forced logits of every recipe against FP32's on a window (the tiny model is near
    uniform, so this checks the graph surgery, not accuracy)."""
    from edgekit.device.lm import log_softmax, open_lm

    window = _windows(tiny_lm)[2]
    ref = log_softmax(open_lm(str(tiny_lm.fp32)).window_logits(window))
    for rid, path in recipes.items():
        got = log_softmax(open_lm(str(path)).window_logits(window))
        kl = float((np.exp(ref) * (ref - got)).sum(-1).mean())
        assert 0 <= kl < 0.05, (rid, kl)


def test_a_recipe_is_made_once_per_process_and_linked_for_another_target(tiny_lm, tmp_path):
    """The second calibration (another target, another folder, the first one deleted) gets the
    same files, linked from the copy kept when the recipe was made, and does not quantize again."""
    import shutil

    from edgekit.device.lm import open_lm
    from edgekit.recipes import Recipe
    from edgekit.toolchains.lm.toolchain import LMToolchain

    toolchain, recipe = LMToolchain(), Recipe(precision="int8-block", block_size=32, kv_cache="cache")
    heard = []
    first = toolchain.quantize(tiny_lm.fp32, recipe, tmp_path / "a" / "q.onnx", on_step=lambda *a, **k: heard.append(a))
    made = {f.name: f.read_bytes() for f in toolchain.files(first)}
    shutil.rmtree(tmp_path / "a")
    again = toolchain.quantize(tiny_lm.fp32, recipe.model_copy(update={"kv_cache": "recompute"}),
                               tmp_path / "b" / "model.onnx", on_step=lambda *a, **k: heard.append(a))
    assert len(heard) == 1  # one "quantize" step: the first call's
    graph = made.pop("q.onnx")
    assert {f.name: f.read_bytes() for f in toolchain.files(again)} == {**made, "model.onnx": graph}
    open_lm(str(again)).window_logits(_windows(tiny_lm)[0])  # its weights are where the graph says


@pytest.fixture(scope="module")
def eval_npz(tiny_lm, tmp_path_factory) -> Path:
    from edgekit.datasets import load_dataset
    from edgekit.toolchains import TOOLCHAINS

    lm = TOOLCHAINS["lm"]
    data = lm.model_data(tiny_lm.fp32, load_dataset(tiny_lm.eval), "eval data")
    return lm.prepare_eval(data, tiny_lm.fp32, tmp_path_factory.mktemp("lm-eval") / "eval.npz",
                           reference=tiny_lm.fp32, samples=4)


def _measure(model: Path, npz: Path, **lm) -> dict:
    from edgekit.evaluate import measure

    return measure(model, npz, threads=1, lm={**TINY_TARGET, "kv_cache": "cache", **lm})


def test_host_metrics_of_fp32_are_its_own_reference_and_match_transformers(tiny_lm, eval_npz):
    m = _measure(tiny_lm.fp32, eval_npz, curve_points=3)
    assert all(m.get(k) is not None for k in LM_METRICS), {k: m.get(k) for k in LM_METRICS}
    assert abs(m["ppl_increase"]) < 1e-5 and m["kl_divergence"] < 1e-6 and m["top1_agreement"] == 1.0
    assert m["ppl_increase_se"] < 1e-5
    with np.load(eval_npz) as npz:
        windows = npz["input_ids"]
    logits = _torch_logits(tiny_lm.hf, windows)
    logp = logits[:, :-1] - np.log(np.exp(logits[:, :-1]).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, windows[:, 1:, None], axis=-1).mean()
    assert m["perplexity"] == pytest.approx(float(np.exp(nll)), rel=1e-4)
    # the KV cache: 2 x layers x KV heads x head size x 4 bytes x the profile's context, computed and held
    assert m["kv_cache_bytes"] == m["kv_cache_bytes_measured"] == 2 * 2 * 2 * 16 * 4 * TINY_TARGET["context"]
    assert m["recompute"]["decode_tokens_per_s"] > 0 and m["recompute"]["peak_rss_mb"] > 0
    assert [p["context"] for p in m["kv_curve"]] == [32, 64, 128]
    assert all(p["kv_cache_bytes"] == 2 * 2 * 2 * 16 * 4 * p["context"] for p in m["kv_curve"])
    assert all(p["cache"]["decode_tokens_per_s"] > 0 and p["recompute"]["decode_tokens_per_s"] > 0
               for p in m["kv_curve"])
    assert m["model_mb"] == pytest.approx((tiny_lm.fp32.stat().st_size
                                           + (tiny_lm.fp32.parent / "model.onnx.data").stat().st_size) / 2 ** 20)


def test_host_metrics_of_a_quantized_model_and_recompute_mode(recipes, eval_npz):
    m = _measure(recipes["int4-block-b32-minmax-offset"], eval_npz, kv_cache="recompute")
    assert m["kv_cache"] == "recompute" and m["kv_cache_bytes"] == 0
    assert m["decode_tokens_per_s"] == m["recompute"]["decode_tokens_per_s"]
    assert m["kl_divergence"] > 0 and 0.5 < m["top1_agreement"] < 1.0
    assert m["perplexity"] == pytest.approx(m["fp32_perplexity"] * (1 + m["ppl_increase"]))
    # its standard error: from the per-token NLL differences to FP32's, by the delta method
    from edgekit.device.lm import log_softmax, open_lm

    with np.load(eval_npz) as npz:
        windows, ref = npz["input_ids"], npz["_ref_target_logp"].astype(np.float64)
    model = open_lm(str(recipes["int4-block-b32-minmax-offset"]))
    nll = np.stack([-np.take_along_axis(log_softmax(model.window_logits(w))[:-1], w[1:, None], -1)[:, 0] for w in windows])
    diff = (nll + ref).reshape(-1)
    assert m["ppl_increase_se"] == pytest.approx((1 + m["ppl_increase"]) * diff.std(ddof=1) / np.sqrt(diff.size), rel=1e-3)


def test_quality_only_scores_the_same_text_and_times_nothing(recipes, eval_npz):
    """What a package's expected metrics use: the same perplexity, no generation timed."""
    model = recipes["int8-block-b32-rtn"]
    full, quality = _measure(model, eval_npz), _measure(model, eval_npz, quality_only=True)
    assert quality["perplexity"] == full["perplexity"] and quality["kl_divergence"] == full["kl_divergence"]
    assert all(quality[k] is None for k in ("decode_tokens_per_s", "ttft_ms", "peak_rss_mb", "recompute", "kv_curve"))
    assert full["decode_tokens_per_s"] > 0 and quality["model_mb"] == full["model_mb"]


# -- text data sets -------------------------------------------------------------------


def test_text_sets_txt_jsonl_and_toml_tokenize_to_the_same_windows(tiny_lm, tmp_path):
    from edgekit.datasets import load_dataset
    from edgekit.toolchains import TOOLCHAINS

    text = tiny_lm.eval.read_text().strip()
    half = len(text) // 2
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": text[:half]}) + "\n\n" + json.dumps({"text": text[half:]}) + "\n")
    (tmp_path / "a.txt").write_text(text[:half])
    (tmp_path / "b.txt").write_text(text[half:])
    (tmp_path / "dataset.toml").write_text('format = "text"\nfiles = ["a.txt", "b.txt"]\n')
    lm = TOOLCHAINS["lm"]
    windows = {name: lm.model_data(tiny_lm.fp32, load_dataset(tmp_path / name if name != "dir" else tmp_path),
                                   "eval data").arrays["input_ids"] for name in ("a.jsonl", "dir")}
    assert windows["a.jsonl"].shape[1] == 256 and windows["a.jsonl"].dtype == np.int64
    assert np.array_equal(windows["a.jsonl"], windows["dir"])
    sets = [load_dataset(tmp_path / "a.jsonl"), load_dataset(tmp_path / "a.jsonl"), load_dataset(tmp_path)]
    assert sets[0].sha256 == sets[1].sha256 != sets[2].sha256


@pytest.mark.parametrize("name, content, needle", [
    ("bad.txt", b"caf\xe9 au lait", "not UTF-8"),
    ("bad.jsonl", b'{"text": "fine"}\n{"txt": "no text field"}\n', "line 2 has no string field 'text'"),
    ("bad.jsonl", b'{"text": "fine"}\nnot json\n', "line 2 is not JSON"),
    ("short.txt", b"too short", "fewer than one window"),
    ("empty.txt", b"   \n", "no text in it"),
])
def test_bad_text_sets_are_one_line_errors(tiny_lm, tmp_path, name, content, needle):
    (tmp_path / name).write_bytes(content)
    targets = tiny_lm_target(tmp_path / "targets")
    result = run_edgekit("calibrate", tiny_lm.fp32, "--target", "tiny-lm", "--targets-dir", targets,
                         "--calibration", tiny_lm.calib, "--eval", tmp_path / name, "-o", tmp_path / "out")
    assert_clean_error(result, name, needle)


def test_a_text_toml_without_files_or_with_a_missing_one_is_a_one_line_error(tiny_lm, tmp_path):
    targets = tiny_lm_target(tmp_path / "targets")
    for body, needle in (('format = "text"\n', "field 'files'"), ('format = "text"\nfiles = ["gone.txt"]\n', "gone.txt")):
        (tmp_path / "set").mkdir(exist_ok=True)
        (tmp_path / "set" / "dataset.toml").write_text(body)
        result = run_edgekit("calibrate", tiny_lm.fp32, "--target", "tiny-lm", "--targets-dir", targets,
                             "--calibration", tmp_path / "set", "--eval", tiny_lm.eval, "-o", tmp_path / "out")
        assert_clean_error(result, "dataset.toml", needle)


def test_lm_profiles_are_checked(tmp_path):
    targets = tiny_lm_target(tmp_path / "t")
    toml = (targets / "tiny-lm.toml").read_text()
    (targets / "tiny-lm.toml").write_text(toml.replace("context = 128", "context = 16"))
    assert_clean_error(run_edgekit("targets", "show", "tiny-lm", "--targets-dir", targets), "context")
    lm_lines = ("[lm]", "context", "prompt_tokens", "generate_tokens", "kv_cache")
    (targets / "tiny-lm.toml").write_text("\n".join(ln for ln in toml.splitlines() if not ln.startswith(lm_lines)))
    assert_clean_error(run_edgekit("targets", "show", "tiny-lm", "--targets-dir", targets), "max_ppl_increase")
    for shipped in ("raspberry-pi-5-lm", "host-cpu-lm"):
        shown = run_edgekit("targets", "show", shipped, "--json")
        assert shown.code == 0, shown.stderr
        assert shown.json()["lm"]["kv_cache"] == "auto"


# -- generate -------------------------------------------------------------------------


def test_generate_prints_the_greedy_continuation(tiny_lm):
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    prompt = "The model"
    result = run_edgekit("generate", tiny_lm.fp32, prompt, "--new-tokens", "10", "--json")
    assert result.code == 0, result.stderr
    got = result.json()
    tok = Tokenizer.from_file(str(tiny_lm.fp32.parent / "tokenizer.json"))
    ids = torch.tensor([tok.encode(prompt).ids])
    model = AutoModelForCausalLM.from_pretrained(tiny_lm.hf, dtype=torch.float32).eval()
    want = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None)[0, ids.shape[1]:].tolist()
    want = want[:next((i for i, t in enumerate(want) if t == 2), len(want))]  # up to its end of sequence
    assert got["text"] == tok.decode(want) and got["text"].strip()
    plain = run_edgekit("generate", tiny_lm.fp32, prompt, "--new-tokens", "10")
    assert plain.code == 0 and plain.stdout.strip() == got["text"].strip()


def test_generate_bad_input_is_a_one_line_error(tiny_lm, tmp_path):
    assert_clean_error(run_edgekit("generate", tiny_lm.fp32, "  "), "prompt is empty")
    assert_clean_error(run_edgekit("generate", tmp_path / "none.onnx", "hi"), "not found")
    alone = tmp_path / "alone"
    alone.mkdir()
    for f in ("model.onnx", "model.onnx.data"):
        (alone / f).write_bytes((tiny_lm.fp32.parent / f).read_bytes())
    assert_clean_error(run_edgekit("generate", alone / "model.onnx", "hi"), "tokenizer.json")


def test_evaluate_measures_a_language_model_on_text_against_its_reference(tiny_lm, recipes):
    result = run_edgekit("evaluate", recipes["int8-block-b32-rtn"], "--data", tiny_lm.eval, "--reference",
                         tiny_lm.fp32, "--samples", "2", "--threads", "1", "--json")
    assert result.code == 0, result.stderr
    m = result.json()
    from edgekit.toolchains import TOOLCHAINS

    assert m["n"] == 2 and m["kv_cache"] == "cache" and m["model_mb"] < 0.6 * TOOLCHAINS["lm"].size_mb(tiny_lm.fp32)
    assert m["perplexity"] == pytest.approx(m["fp32_perplexity"] * (1 + m["ppl_increase"]))
    assert 0 < m["kl_divergence"] < 0.05 and 0.5 < m["top1_agreement"] <= 1
    table = run_edgekit("evaluate", recipes["int8-block-b32-rtn"], "--data", tiny_lm.eval, "--samples", "1")
    assert table.code == 0 and "perplexity" in table.stdout and "decode tokens/s" in table.stdout
