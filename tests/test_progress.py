"""Long work shows progress: the library reports Steps to a callback (never prints), and the
CLI draws them on stderr only when it is a terminal and the command prints no --json."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
from itertools import groupby

from helpers.cli import run_edgekit
from helpers.encoder import build_encoder, make_encoder_data
from helpers.paths import CALIB, EVAL, EXAMPLE_ONNX, REPO
from edgekit.calibrate import calibrate
from edgekit.datasets import load_dataset
from edgekit.search.context import SearchOptions
from edgekit.progress import Step
from edgekit.recipes import Recipe
from edgekit.targets import load_file, load_profile

FAST = {"runs": 5, "min_seconds": 0.05}
RECIPES = [Recipe(precision="fp32"), Recipe(precision="int8-dynamic"), Recipe(precision="int8-static", method="minmax")]


def _stages(steps: list[Step], phase: str) -> list[tuple]:
    """(i, n, candidate, what) of the steps of one phase, each run of repeats once."""
    return [key for key, _ in groupby((s.i, s.n, s.candidate, s.what) for s in steps if s.phase == phase)]


def test_calibrate_reports_each_candidate_i_of_n_and_its_stages(tmp_path):
    steps: list[Step] = []
    calibrate(EXAMPLE_ONNX, load_profile("host-cpu"), load_dataset(CALIB), load_dataset(EVAL), tmp_path / "out",
              recipes=RECIPES, eval_samples=100, measure_opts=FAST, search=None, on_step=steps.append)
    assert [(s.phase, s.what) for s in steps[:1]] == [("prepare", "eval data")]
    ids = [r.id for r in RECIPES]
    assert _stages(steps, "sweep") == [(i + 1, 3, cid, what) for i, cid in enumerate(ids)
                                       for what in ("quantize", "evaluate")]
    details = [s.detail for s in steps if s.candidate == "int8-static-minmax" and s.what == "quantize"]
    batches = [d for d in details if d.startswith("calibration ")]
    assert details[1] == "pre-processing" and details[-1] == "applying the ranges"
    total = int(batches[0].rsplit("/", 1)[1])  # at most 512 samples, 16 a batch
    assert batches == [f"calibration {k}/{total}" for k in range(1, total + 1)]
    assert [s.detail for s in steps if s.candidate == "int8-dynamic" and s.what == "quantize"] == [
        "", "pre-processing", "INT8 weights"]


def test_a_profile_without_fp32_reports_the_baseline_first(tmp_path):
    steps: list[Step] = []
    calibrate(EXAMPLE_ONNX, load_profile("host-cpu"), load_dataset(CALIB), load_dataset(EVAL), tmp_path / "out",
              recipes=RECIPES[1:2], eval_samples=100, measure_opts=FAST, search=None, on_step=steps.append)
    assert [(s.phase, s.what) for s in steps if s.phase != "sweep"] == [("prepare", "eval data"),
                                                                        ("baseline", "evaluate")]
    assert _stages(steps, "sweep") == [(1, 1, "int8-dynamic", "quantize"), (1, 1, "int8-dynamic", "evaluate")]


def _int8_profile(tmp_path):
    text = (REPO / "targets" / "host-cpu.toml").read_text()
    for old, new in {'name = "host-cpu"': 'name = "int8-only"',
                     'precisions = ["fp32", "fp16", "int8-dynamic", "int8-static", "int8-token", "int8-block", "int4-block"]': 'precisions = ["int8-dynamic"]',
                     "per_channel = true": "per_channel = false", "reduce_range = true": "reduce_range = false",
                     "min_fidelity_cosine = 0.95": "min_fidelity_cosine = 0.99"}.items():
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "int8-only.toml").write_text(text)
    return load_file(tmp_path / "int8-only.toml")


def test_the_search_reports_its_ranking_and_each_step_of_at_most_n(tmp_path):
    """The outlier encoder: no uniform INT8 recipe meets cosine 0.99, so the search ranks the
    nodes (sensitivity, batch by batch) and measures its steps, each as quantize + evaluate."""
    model = build_encoder(tmp_path / "encoder.onnx", outlier_layer=True)
    calib = make_encoder_data(tmp_path / "calib.npz", 64, seed=1)
    evald = make_encoder_data(tmp_path / "eval.npz", 64, seed=2)
    steps: list[Step] = []
    result = calibrate(model, _int8_profile(tmp_path), load_dataset(calib), load_dataset(evald), tmp_path / "out",
                       measure_opts=FAST, search=SearchOptions(rerank=False), on_step=steps.append)
    search = result.record.search
    assert search["steps"], search["why"]
    ranking = [s for s in steps if s.phase == "search" and s.i is None]
    assert ranking and {s.what for s in ranking} == {"sensitivity"}
    assert {s.candidate for s in ranking} == {search["base"]}  # re-ranking is off
    assert [s.detail for s in ranking][-4:] == [f"batch {k} of 4" for k in (1, 2, 3, 4)]  # 32 samples, 8 a batch
    first_step = next(k for k, s in enumerate(steps) if s.phase == "search" and s.i is not None)
    assert steps.index(ranking[-1]) < first_step
    measured = [(i, cid, [what for _, _, _, what in group])
                for (i, cid), group in groupby(_stages(steps, "search"), key=lambda t: (t[0], t[2])) if i is not None]
    assert [(i, cid) for i, cid, _ in measured] == [(s["step"], s["candidate"]) for s in search["steps"]]
    assert all(whats == ["quantize", "evaluate"] for _, _, whats in measured)
    bounds = {s.n for s in steps if s.phase == "search" and s.i is not None}
    assert all(n >= len(search["steps"]) for n in bounds)
    assert max(bounds) <= 14  # max_float_nodes 8: 1 op-types step, at most 5 growing, 8 pruning


def test_the_eta_is_the_mean_time_of_finished_candidates_times_those_left(monkeypatch):
    from rich.progress import Progress

    import edgekit.cli._progress as shown

    clock = [100.0]
    monkeypatch.setattr(shown, "now", lambda: clock[0])
    bar = Progress(disable=True)
    display = shown.StepDisplay(bar, "calibrating")
    times = shown._Times()
    for i, at in ((1, 100.0), (2, 110.0), (3, 130.0)):  # candidates 1 and 2 took 10 s and 20 s
        clock[0] = at
        display(Step("quantize", phase="sweep", i=i, n=5, candidate=f"c{i}"))
    clock[0] = 133.0
    task = bar.tasks[0]
    assert task.description == "candidate 3 of 5: quantize (c3)" and task.completed == 2 and task.total == 5
    assert times.render(task).plain.endswith(", ETA 0:42")  # 15 s a candidate x 3 left, less 3 s under way
    display(Step("evaluate", phase="search", i=1, n=14, candidate="c3-x1"))
    assert bar.tasks[0].description == "search step 1 of at most 14: evaluate (c3-x1)"
    assert times.render(bar.tasks[0]).plain.endswith(", ETA up to 2:34")  # 33 s for 3 candidates, 14 left


# -- the command line: on a terminal, and not ---------------------------------------------------


def _two_recipe_target(tmp_path, base: str = "raspberry-pi-4"):
    """The profile with two recipes (fp32, per-tensor int8-dynamic): a short calibrate run."""
    text = (REPO / "targets" / f"{base}.toml").read_text()
    text = re.sub(r"(?m)^precisions = .*$", 'precisions = ["fp32", "int8-dynamic"]', text)
    text = re.sub(r"(?m)^per_channel = true$", "per_channel = false", text)
    text = re.sub(r"(?m)^name = .*$", f'name = "{base}-short"', text)
    path = tmp_path / f"{base}-short.toml"
    path.write_text(text)
    return path


def _calibrate_args(tmp_path, *extra):
    return ("calibrate", EXAMPLE_ONNX, "--target", _two_recipe_target(tmp_path), "--calibration", CALIB, "--eval", EVAL,
            "-o", tmp_path / "out", "--runs", "5", "--eval-samples", "200", "--search", "off", *extra)


def _run_on_a_terminal(*args) -> tuple[int, str, str]:
    """`edgekit ARGS` with stderr on a pseudo-terminal (stdout a pipe): (code, stdout, stderr as shown)."""
    main, child = pty.openpty()
    env = dict(os.environ, COLUMNS="200", TERM="xterm", NO_COLOR="1")
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli.main", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=child, env=env)
    os.close(child)
    shown = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    stdout = proc.stdout.read().decode()
    proc.wait(timeout=600)
    reader.join(timeout=60)
    os.close(main)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", shown.decode(errors="replace")).replace("\r", "\n")
    return proc.returncode, stdout, text


def test_calibrate_on_a_terminal_shows_candidate_i_of_n_the_step_elapsed_and_eta(tmp_path):
    code, stdout, shown = _run_on_a_terminal(*_calibrate_args(tmp_path))
    assert code == 0, shown
    for text in ("eval data", "candidate 1 of 2: quantize (fp32)", "candidate 1 of 2: evaluate (fp32)",
                 "candidate 2 of 2: quantize, pre-processing (int8-dynamic)",
                 "candidate 2 of 2: evaluate (int8-dynamic)", "elapsed"):
        assert text in shown, (text, shown)
    assert re.search(r"\d+:\d\d elapsed, ETA \d+:\d\d", shown), shown  # once the first candidate is done
    assert "calibration for raspberry-pi-4-short" in stdout and "candidate 1 of 2" not in stdout


def test_calibrate_shows_no_progress_under_json_or_off_a_terminal(tmp_path):
    (tmp_path / "json").mkdir()
    (tmp_path / "piped").mkdir()
    code, stdout, shown = _run_on_a_terminal(*_calibrate_args(tmp_path / "json", "--json"))
    assert code == 0, shown
    assert "candidate" not in shown and "elapsed" not in shown and shown.strip() == "", shown
    piped = run_edgekit(*_calibrate_args(tmp_path / "piped"))
    assert piped.code == 0, piped.stderr
    assert "candidate" not in piped.stderr and "elapsed" not in piped.stderr
    assert piped.stderr.strip().splitlines()[-1].startswith("wrote ")


def test_quantize_on_a_terminal_shows_its_stage(tmp_path):
    code, _, shown = _run_on_a_terminal("quantize", EXAMPLE_ONNX, "-p", "int8-static", "--calibration", CALIB,
                                        "-o", tmp_path / "q.onnx")
    assert code == 0, shown
    assert re.search(r"quantize, calibration 1/\d+ \(int8-static-minmax\)", shown), shown
    code, _, shown = _run_on_a_terminal("quantize", EXAMPLE_ONNX, "-p", "int8-dynamic", "-o", tmp_path / "d.onnx",
                                        "--json")
    assert code == 0 and "quantize" not in shown, shown


def test_the_library_prints_nothing(tmp_path, capfd):
    calibrate(EXAMPLE_ONNX, load_profile("host-cpu"), load_dataset(CALIB), load_dataset(EVAL), tmp_path / "out",
              recipes=RECIPES, eval_samples=50, measure_opts=FAST, search=None, on_step=lambda step: None)
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == ""
