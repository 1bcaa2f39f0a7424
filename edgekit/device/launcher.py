"""The runner as a device holds it: ROOT/bin/edgekit_runner.py (the launcher) beside this
package, renamed edgekit_device, and what push sends to put a new one in place.

Standard library only, Python 3.9: this runs on devices.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

__all__ = ["LAUNCHER_NAME", "PACKAGE_NAME", "ARCHIVE_NAME", "LAUNCHER_SOURCE", "runner_files"]

LAUNCHER_NAME = "edgekit_runner.py"
PACKAGE_NAME = "edgekit_device"
ARCHIVE_NAME = PACKAGE_NAME + ".tar"  # a new runner's package as push sends it: one file
# bin/edgekit_runner.py as shipped: this package, renamed edgekit_device, sits beside it. A
# runner that push sent as bin/edgekit_device.tar is put in place by the next start: under
# the device's writer lock, the tar is claimed by a rename, unpacked into a new folder, and
# that folder renamed in. The lock keeps an install's cleaning of leftovers (install.py) off
# a start that is unpacking, and a second start from importing the package mid-swap. A start
# killed half-way leaves the old package (or none) and leftovers that install and gc remove;
# the runner's hash then still differs from the host's, so the next push sends it again.
LAUNCHER_SOURCE = '''#!/usr/bin/env python3
"""edgekit's on-device runner (see edgekit_device/runner.py): python3 edgekit_runner.py --help"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def device_lock():
    """ROOT/.lock, the runner's writer lock (edgekit_device/state.py), for up to a minute: an
    install cleaning leftovers and another start swapping the package in wait for this one."""
    import fcntl
    import time

    fd = os.open(os.path.join(os.path.dirname(HERE), ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + 60
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None  # held too long: run the runner as it is; a later start unpacks
            time.sleep(0.05)


def unpack_new_runner():
    archive = os.path.join(HERE, "%(archive)s")
    package = os.path.join(HERE, "%(package)s")
    if not os.path.exists(archive) and os.path.isdir(package):
        return  # nothing sent, nothing being swapped: no lock taken
    fd = device_lock()
    if fd is None:
        return
    try:
        unpack_locked(archive, package)
    finally:
        os.close(fd)


def unpack_locked(archive, package):
    tag = os.urandom(4).hex()
    claimed = "%%s.unpacking-%%s" %% (archive, tag)
    try:
        os.rename(archive, claimed)
    except FileNotFoundError:
        return  # another start put it in place while this one waited
    import tarfile

    new = "%%s.new-%%s" %% (package, tag)
    os.mkdir(new)
    with tarfile.open(claimed, "r:") as tar:
        for member in tar:
            if not member.isfile() or "/" in member.name or member.name.startswith(".") or \\
                    not member.name.endswith(".py"):
                raise SystemExit("%%s: %%r is not a runner module" %% (archive, member.name))
            with open(os.path.join(new, member.name), "wb") as out:
                out.write(tar.extractfile(member).read())
    if os.path.isdir(package):
        os.rename(package, "%%s.old-%%s" %% (package, tag))
    os.rename(new, package)
    os.unlink(claimed)


unpack_new_runner()
sys.path.insert(0, HERE)

from %(package)s.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
''' % {"archive": ARCHIVE_NAME, "package": PACKAGE_NAME}


def runner_files(package_dir: Optional[str] = None) -> Dict[str, bytes]:
    """The runner as shipped (relative path -> bytes): the launcher and this package's
    modules. Host and device both hash this to tell whether bin/ is up to date."""
    package_dir = package_dir or os.path.dirname(os.path.abspath(__file__))
    files = {LAUNCHER_NAME: LAUNCHER_SOURCE.encode()}
    for entry in sorted(os.listdir(package_dir)):
        if entry.endswith(".py"):
            with open(os.path.join(package_dir, entry), "rb") as fh:
                files[f"{PACKAGE_NAME}/{entry}"] = fh.read()
    return files
