"""The runner's upkeep commands: status (what is installed and active), gc (old versions,
stale uploads and scratch runs removed) and repair (the device's records brought back in line
with its files). See edgekit.device.runner for the command line.

Standard library only, Python 3.9: this runs on devices.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Dict, List, Optional

from .launcher import runner_files
from .state import META, Layout, RunnerError, read_json
from .trust import trusted_keys, tree_hash

__all__ = ["cmd_status", "cmd_gc", "cmd_repair", "corrupted_files", "disk_free"]


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
            "importable": importable(), "models": models, "incoming": incoming,
            "trusted_keys": [p for p, _ in trusted_keys(layout.trust)], "disk_free_bytes": disk_free(layout.root),
            "now": time.time()}


RUNTIMES = ("onnxruntime", "ai_edge_litert", "tflite_runtime")  # evaluate needs numpy and one of these
MODULES = ("numpy", *RUNTIMES)


def importable() -> Dict[str, bool]:
    """Which of evaluate's modules this Python finds, found where evaluate looks (the runner
    starts without site, -S: status turns it on as evaluate does), none imported."""
    import importlib.util

    if sys.flags.no_site:
        import site

        site.main()
    found = {}
    for module in MODULES:
        try:
            found[module] = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found[module] = False
    return found


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
