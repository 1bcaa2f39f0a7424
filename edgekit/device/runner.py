"""edgekit's on-device runner: one command per process, one JSON object on stdout.

    python3 ROOT/bin/edgekit_runner.py [--root ROOT] COMMAND ...

    install FILE [--sha256 H] [--size N]   FILE in ROOT/incoming/; verify, unpack into bundles/
    activate NAME VERSION                  switch current/NAME atomically
    rollback NAME                          back to the previous version
    restore NAME [--current V] [--previous V]
                                           put NAME's current and previous back as they were
                                           (no --current: nothing active); for a halted rollout
    evaluate NAME [--version V] [--device-name D] [--samples N]
                                           measure; write reports/NAME/VERSION/RUN_ID.json
    measure RUN MODEL DATA [--threads N] [--providers A,B] [--runs N] [--min-seconds S]
            [--device-name D]              time a model uploaded to scratch/RUN/ (calibrate
                                           --measure-on); installed bundles are not touched
    scratch-clean RUN                      remove scratch/RUN/
    generate NAME PROMPT [--version V] [--new-tokens N] [--chat]
                                           a language model's greedy answer (needs `tokenizers`)
    status                                 what is installed and active, the runner's hash,
                                           free disk space and the device's clock
    gc --keep K [--part-idle S]            remove all but the K newest versions of each model
                                           (never the current or the previous one), and
                                           uploads and scratch runs not written to for S
                                           seconds (a day)
    repair                                 rebuild state files from what is installed and
                                           active, remove what interrupted work left, and
                                           name bundles whose files changed since install

Success prints {"ok": true, "command": ..., ...} and exits 0. Failure prints
{"ok": false, "command": ..., "error": "...", "kind": "..."} and exits 2 when the input
was refused (usage, bundle, integrity, conflict, state) and 1 otherwise.

Standard library only (numpy and the runtime are imported by `evaluate` and `generate`), Python 3.9.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

# install (tarfile, tempfile), report (socket, numpy later), shutil, threading and select are
# imported by the commands that use them: status, activate and restore, most of what a push
# or rollout asks a device for, start without them (a runner's start is a Python start on
# every device, every step; platform, shutil and secrets were a third of a status's CPU).
from .state import META, Layout, RunnerError, check_name, read_json
from .trust import trusted_keys, tree_hash

__all__ = ["main", "runner_files", "LAUNCHER_NAME", "LAUNCHER_SOURCE", "PACKAGE_NAME", "ARCHIVE_NAME",
           "RUNTIME_COMMANDS"]

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
# Commands that import numpy and a runtime. The host starts the runner with `python -S`: a
# status or an install needs nothing outside the standard library, and site-packages (every
# .pth file in them) cost a device's Python more than its own start; these turn site on.
RUNTIME_COMMANDS = ("evaluate", "measure", "generate")


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


def cmd_install(layout: Layout, args) -> dict:
    from .install import install

    return install(layout, args.file, sha256=args.sha256, size=args.size)


def cmd_activate(layout: Layout, args) -> dict:
    with layout.locked():
        state = layout.read_state(args.name, repair=True)
        if state["current"] == args.version:
            return {"name": args.name, "current": state["current"], "previous": state["previous"], "changed": False}
        state = layout.transition(args.name, "activate", args.version, state["current"])
    return {"name": args.name, "current": state["current"], "previous": state["previous"], "changed": True}


def cmd_rollback(layout: Layout, args) -> dict:
    with layout.locked():
        state = layout.read_state(args.name, repair=True)
        back, now = state["previous"], state["current"]
        if not back:
            raise RunnerError(f"{args.name} has no previous version on this device to roll back to "
                              f"(it runs {now or 'nothing'}); nothing was changed", "state", 1)
        state = layout.transition(args.name, "rollback", back, now)
    return {"name": args.name, "current": state["current"], "previous": state["previous"], "changed": True}


def cmd_restore(layout: Layout, args) -> dict:
    with layout.locked():
        now = layout.read_state(args.name, repair=True)["current"]
        state = layout.transition(args.name, "restore", args.current, args.previous)
    return {"name": args.name, "current": state["current"], "previous": state["previous"], "changed": now != args.current}


def cmd_evaluate(layout: Layout, args) -> dict:
    from .report import evaluate_bundle

    watch_parent()
    report, path = evaluate_bundle(layout, args.name, args.version, device_name=args.device_name,
                                   samples=args.samples)
    if report["status"] != "ok":
        error = RunnerError(f"evaluation of {args.name} {report['bundle']['version']} failed: {report['error']}",
                            "evaluation", 1)
        error.extra = {"report": report, "report_path": path}  # type: ignore[attr-defined]
        raise error
    return {"report": report, "report_path": path}


def cmd_measure(layout: Layout, args) -> dict:
    from .scratch import measure

    watch_parent()
    providers = [p for p in (args.providers or "").split(",") if p] or None
    return measure(layout, args.run, args.model, args.data, threads=args.threads, providers=providers,
                   runs=args.runs, min_seconds=args.min_seconds, device_name=args.device_name)


def cmd_scratch_clean(layout: Layout, args) -> dict:
    from .scratch import clean as clean_scratch

    return clean_scratch(layout, args.run)


def cmd_generate(layout: Layout, args) -> dict:
    """A language model's greedy answer to a prompt, where the device has `tokenizers`."""
    from .install import bundle_manifest
    from .lm_generate import GenerateError, generate_text

    version = args.version or layout.current_version(args.name)
    if version is None:
        raise RunnerError(f"{args.name} has no active version on this device; give --version or activate one", "state", 2)
    manifest = bundle_manifest(layout, args.name, version)
    model = os.path.join(layout.bundle_dir(args.name, version), manifest["model"]["file"])
    threads = int((manifest.get("runtime") or {}).get("threads", (manifest.get("target") or {}).get("threads", 0)) or 0)
    try:
        result = generate_text(model, args.prompt, args.new_tokens, chat=args.chat, threads=threads)
    except GenerateError as exc:
        raise RunnerError(str(exc), "usage", 2) from exc
    return dict(result, name=args.name, version=version)


def watch_parent(every: float = 2.0) -> None:
    """Stop this process when whoever started it is gone (the host's connection died: sshd's
    session ended and closed our stdout, or the local edgekit was killed): an evaluation
    nobody will read must not hold the device's CPU and memory."""
    import select
    import threading

    parent = os.getppid()
    poller = select.poll()
    poller.register(sys.stdout.fileno(), 0)  # POLLERR/POLLHUP are always reported

    def gone() -> bool:
        if os.getppid() != parent:
            return True
        try:
            return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
        except (OSError, ValueError):
            return False

    def watch() -> None:
        while not gone():
            time.sleep(every)
        os._exit(3)
    threading.Thread(target=watch, name="edgekit-watch-parent", daemon=True).start()


def _reports(layout: Layout, name: str) -> Dict[str, List[str]]:
    base = os.path.join(layout.reports, name)
    if not os.path.isdir(base):
        return {}
    return {v: sorted(f for f in os.listdir(os.path.join(base, v)) if f.endswith(".json"))
            for v in sorted(os.listdir(base)) if os.path.isdir(os.path.join(base, v))}


def cmd_status(layout: Layout, args) -> dict:
    models = {}
    for name in layout.names():
        state = layout.read_state(name)
        installed = layout.versions(name)
        models[name] = {"current": state["current"], "previous": state["previous"],
                        "installed": installed, "history": state["history"][-10:],
                        "reports": _reports(layout, name),
                        "bundles": {v: _installed_meta(layout, name, v) for v in installed}}
    incoming = sorted(os.listdir(layout.incoming)) if os.path.isdir(layout.incoming) else []
    return {"root": layout.root, "runner_sha256": tree_hash(runner_files()), "python": sys.version.split()[0],
            "models": models, "incoming": incoming, "trusted_keys": [p for p, _ in trusted_keys(layout.trust)],
            "disk_free_bytes": disk_free(layout.root), "now": time.time()}


def _installed_meta(layout: Layout, name: str, version: str) -> Optional[dict]:
    """The sha256 and signer the install recorded for NAME VERSION (None if unreadable): with
    them in the status, a push learns in the same call whether a bundle is there already."""
    try:
        meta = read_json(os.path.join(layout.bundle_dir(name, version), META), 65536) or {}
    except RunnerError:
        return None
    return {"sha256": meta.get("sha256"), "signer": meta.get("signer")}


def disk_free(path: str) -> Optional[int]:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def cmd_gc(layout: Layout, args) -> dict:
    import shutil

    from .install import clean_leftovers, clean_parts
    from .scratch import clean_idle as clean_idle_scratch

    removed = []
    with layout.locked():
        clean_leftovers(layout)
        parts = clean_parts(layout, args.part_idle)
        for name in layout.names():
            state = layout.read_state(name, repair=True)
            versions = layout.versions(name)  # oldest first
            keep = set(versions[max(0, len(versions) - args.keep):] if args.keep else []) | {state["current"], state["previous"]}
            for version in versions:
                if version not in keep:
                    # Rename first: a half-deleted bundle never looks installed.
                    trash = os.path.join(layout.bundles, f".staging-gc-{name}-{version}")
                    os.rename(layout.bundle_dir(name, version), trash)
                    shutil.rmtree(trash, ignore_errors=True)
                    removed.append({"name": name, "version": version})
    return {"removed": removed, "keep": args.keep, "parts_removed": [p for p, _ in parts],
            "freed_bytes": sum(n for _, n in parts), "scratch_removed": clean_idle_scratch(layout, args.part_idle)}


def cmd_repair(layout: Layout, args) -> dict:
    """Bring the device's own records back in line with what is installed and active."""
    from .install import clean_leftovers

    fixed = []
    with layout.locked():
        clean_leftovers(layout)
        for entry in os.listdir(layout.current) if os.path.isdir(layout.current) else []:
            if entry.startswith("."):  # a link switch killed half-way
                os.unlink(os.path.join(layout.current, entry))
                fixed.append(f"removed current/{entry}, left by an interrupted switch")
        for name in layout.names():
            live = layout.current_version(name)
            if live is not None and not os.path.isdir(layout.bundle_dir(name, live)):
                layout.unlink_current(name)
                fixed.append(f"current/{name} pointed at {live}, which is not installed: {name} runs nothing now")
            layout.read_state(name, repair=True)
            broken = corrupted_files(layout, name)
            fixed += [f"{name} {v}: {why}; install it again (push) or gc it" for v, why in broken]
    fixed += layout.warnings
    layout.warnings = []
    return {"fixed": fixed, "models": cmd_status(layout, args)["models"]}


def corrupted_files(layout: Layout, name: str) -> List[tuple]:
    """(version, what is wrong) for installed versions whose files no longer match their manifest."""
    from .install import bundle_manifest
    from .trust import sha256_file

    out = []
    for version in layout.versions(name):
        try:
            manifest = bundle_manifest(layout, name, version)
        except RunnerError as exc:
            out.append((version, str(exc)))
            continue
        for rel, want in sorted((manifest.get("files") or {}).items()):
            path = os.path.join(layout.bundle_dir(name, version), rel)
            if not os.path.isfile(path) or sha256_file(path) != want.get("sha256"):
                out.append((version, f"{rel} is missing or changed since install"))
                break
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # JSON on stdout instead of argparse's usage text
        raise RunnerError(message, "usage", 2)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgekit_runner.py", description="edgekit's on-device runner; prints one JSON object.")
    p.add_argument("--root", default=None, help="the device root (default: the folder above bin/)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("install")
    s.add_argument("file")
    s.add_argument("--sha256")
    s.add_argument("--size", type=_non_negative)
    s = sub.add_parser("activate")
    s.add_argument("name")
    s.add_argument("version")
    sub.add_parser("rollback").add_argument("name")
    s = sub.add_parser("restore")
    s.add_argument("name")
    s.add_argument("--current")
    s.add_argument("--previous")
    s = sub.add_parser("evaluate")
    s.add_argument("name")
    s.add_argument("--version")
    s.add_argument("--device-name")
    s.add_argument("--samples", type=_non_negative)
    s = sub.add_parser("measure")
    s.add_argument("run")
    s.add_argument("model")
    s.add_argument("data")
    s.add_argument("--threads", type=_non_negative, default=0)
    s.add_argument("--providers", default="")
    s.add_argument("--runs", type=_positive, default=50)
    s.add_argument("--min-seconds", type=float, default=0.5)
    s.add_argument("--device-name")
    sub.add_parser("scratch-clean").add_argument("run")
    s = sub.add_parser("generate")
    s.add_argument("name")
    s.add_argument("prompt")
    s.add_argument("--version")
    s.add_argument("--new-tokens", type=_non_negative, default=64)
    s.add_argument("--chat", action="store_true")
    sub.add_parser("status")
    s = sub.add_parser("gc")
    s.add_argument("--keep", type=_non_negative, required=True)
    s.add_argument("--part-idle", type=_non_negative, default=24 * 3600,
                   help="remove uploads in incoming/ not written to for this many seconds")
    sub.add_parser("repair")
    return p


COMMANDS = {"install": cmd_install, "activate": cmd_activate, "rollback": cmd_rollback, "restore": cmd_restore,
            "evaluate": cmd_evaluate, "measure": cmd_measure, "scratch-clean": cmd_scratch_clean,
            "generate": cmd_generate, "status": cmd_status, "gc": cmd_gc, "repair": cmd_repair}


PLAIN_ERRNO = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.ENOMEM: "out of memory"}


def os_error_text(exc: OSError) -> str:
    """'disk full (No space left on device): ROOT/bundles/.staging-x/files/model.onnx'."""
    plain = PLAIN_ERRNO.get(exc.errno or 0)
    what = f"{plain} ({exc.strerror})" if plain and exc.strerror else exc.strerror or str(exc)
    return f"{what}: {exc.filename}" if exc.filename else what


def default_root() -> str:
    """ROOT for ROOT/bin/edgekit_device/runner.py; EDGEKIT_ROOT overrides."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.environ.get("EDGEKIT_ROOT") or os.path.dirname(here)


def main(argv: Optional[Sequence[str]] = None) -> int:
    command = None
    try:
        args = _parser().parse_args(argv)
        command = args.command
        if command in RUNTIME_COMMANDS and sys.flags.no_site:
            import site

            site.main()
        for attr in ("name", "version", "current", "previous"):
            if getattr(args, attr, None) is not None:
                check_name(getattr(args, attr), attr)
        layout = Layout(args.root or default_root())
        result = dict(ok=True, command=command, **COMMANDS[command](layout, args))
        if layout.warnings:
            result["warnings"] = layout.warnings
        code = 0
    except RunnerError as exc:
        result = dict(ok=False, command=command, error=str(exc), kind=exc.kind, **getattr(exc, "extra", {}))
        code = exc.exit_code
    except OSError as exc:  # a full disk, a permission: the host gets it as JSON, not a traceback
        result, code = dict(ok=False, command=command, error=os_error_text(exc), kind="os",
                            errno=errno.errorcode.get(exc.errno or 0)), 1
    except MemoryError:
        result, code = dict(ok=False, command=command, error="out of memory", kind="memory"), 1
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
