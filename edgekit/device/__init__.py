"""edgekit's on-device code: the runner (install, activate, rollback, evaluate, status,
gc) and the one evaluation code path the host shares.

Standard library + numpy + one runtime, Python 3.9 syntax, relative imports only: this
package is shipped to devices as ``edgekit_device`` beside ``bin/edgekit_runner.py``.
"""
