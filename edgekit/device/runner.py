"""edgekit's on-device runner: one command per process, one JSON object on stdout.

    python3 ROOT/bin/edgekit_runner.py [--root ROOT] COMMAND ...

    install FILE [--sha256 H] [--size N] [--manifest-sha256 M] [--stdin]
                                           FILE in ROOT/incoming/; verify, unpack into bundles/
                                           (with M, the file is checked by its manifest's hash,
                                           not hashed whole: every file is hashed against it;
                                           --stdin: FILE arrives on stdin as it is installed,
                                           after the line "edgekit-offset K" says what is here)
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
from typing import Optional, Sequence

# install (tarfile, tempfile), report (socket, numpy later), shutil, threading and select are
# imported by the commands that use them: status, activate and restore, most of what a push
# or rollout asks a device for, start without them (a runner's start is a Python start on
# every device, every step; platform, shutil and secrets were a third of a status's CPU).
from .state import Layout, RunnerError, check_name
from .upkeep import cmd_gc, cmd_repair, cmd_status

__all__ = ["main", "RUNTIME_COMMANDS"]

# Commands that import numpy and a runtime. The host starts the runner with `python -S`: a
# status or an install needs nothing outside the standard library, and site-packages (every
# .pth file in them) cost a device's Python more than its own start; these turn site on.
RUNTIME_COMMANDS = ("evaluate", "measure", "generate")


def cmd_install(layout: Layout, args) -> dict:
    from .install import install

    if args.stdin:
        from .receive import receive

        if args.size is None:
            raise RunnerError("install --stdin needs --size: the bytes to receive", "usage", 2)
        return receive(layout, args.file, size=args.size, sha256=args.sha256, manifest_sha256=args.manifest_sha256)
    return install(layout, args.file, sha256=args.sha256, size=args.size, manifest_sha256=args.manifest_sha256)


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
        last = state["history"][-1] if state["history"] else {}
        if last.get("action") == "rollback" and last.get("version") == now:  # its previous is the version it left
            raise RunnerError(f"{args.name} was rolled back to {now} already: a second rollback would run "
                              f"{back} again, the version it left; push {back}'s bundle (activating it) to run it "
                              "again; nothing was changed", "state", 1)
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
    s.add_argument("--manifest-sha256")
    s.add_argument("--stdin", action="store_true")
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
