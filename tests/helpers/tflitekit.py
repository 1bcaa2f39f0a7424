"""Shared by the TFLite tests: one calibrate run of the example model for the Pi Zero 2 W per
test session (the host tests read its record, the device tests package its model)."""

from __future__ import annotations

from pathlib import Path

from helpers.cli import run_edgekit
from helpers.paths import CALIB, EVAL, EXAMPLE_PT2


TARGET = "raspberry-pi-zero-2w"
_RUNS: dict = {}


def calibrated(tmp_path_factory) -> tuple[Path, dict]:
    """(out dir with model.tflite and calibration.json, the --json record), made once."""
    if "zero" not in _RUNS:
        out = tmp_path_factory.mktemp("tflite-calibrate") / "out"
        result = run_edgekit("calibrate", EXAMPLE_PT2, "--target", TARGET, "--calibration", CALIB, "--eval", EVAL,
                             "-o", out, "--runs", "10", "--json")
        assert result.code == 0, result.stderr
        _RUNS["zero"] = (out, result.json())
    return _RUNS["zero"]
