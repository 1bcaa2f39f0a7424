"""What the benchmarks that time edgekit's command line share: this checkout, byte-compiled."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def compile_edgekit() -> bool:
    """Byte-compile this checkout's edgekit before any timing, as `pip install` does for an
    installed copy: with PYTHONDONTWRITEBYTECODE set (this machine's sessions set it) and no
    current __pycache__, every edgekit run compiled the modules it imports from source
    (0.3-0.4 CPU s a push on the host here; the report's chart server too), which neither an
    installed edgekit nor scp pays. True if it compiled."""
    import compileall

    return bool(compileall.compile_dir(str(REPO / "edgekit"), quiet=1))
