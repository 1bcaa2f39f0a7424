"""Where things are: the checkout, its example model and data sets, and the older Pythons
that stand in for devices (pyenv installs them; Raspberry Pi OS Bullseye ships 3.9)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLE_ONNX = REPO / "examples" / "digits" / "model.onnx"
EXAMPLE_PT2 = REPO / "examples" / "digits" / "model.pt2"
CALIB = REPO / "calibration" / "digits" / "calib.npz"
EVAL = REPO / "calibration" / "digits" / "eval.npz"
PYENV = Path("/root/.pyenv/versions")


def pyenv_python(version: str) -> Optional[Path]:
    """The newest pyenv Python of `version` ("3.9", or exactly "3.9.18"), or None."""
    found = sorted((p for p in PYENV.glob(f"{version}*") if (p / "bin" / "python").exists()),
                   key=lambda p: tuple(int(x) for x in p.name.split(".") if x.isdigit()))
    found = [p for p in found if p.name == version or p.name.startswith(version + ".")]
    return found[-1] / "bin" / "python" if found else None


PY39 = pyenv_python("3.9")  # the device Python of a Raspberry Pi OS Bullseye (None: not installed here)
