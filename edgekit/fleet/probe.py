"""A push's first question to a device, answered by its shell instead of its runner.

Before it sends anything, a push needs five things from a device: whether it has a runner
and whether that runner is this host's, what the bundle's model runs now (current and
previous, for the record), whether this very bundle is installed, whether the device
trusts keys, and its free space. The runner's `status` says all of it, but it is a Python
start on every device (8 at once on the benchmark's 2 cores). One POSIX `sh` command in
the connection's command session says it too, from the files the runner keeps:

- the runner: the sha256 of the launcher and of each module of its package, from
  `sha256sum` (the runner's hash is computed from those on the host, as the runner
  computes it from the files; a hash taken now, so no marker that could be stale), and
  whether a new runner's tar waits to be unpacked;
- bundles/NAME/VERSION/.bundle.json as the runner's install wrote it;
- state/NAME.json and the current/NAME link, read as the runner reads them
  (edgekit.device.state, the same code);
- the names of trust/*.pub, and `df` of the root.

The answer is used only when it is whole and agrees with this host: a device whose runner
hash differs (or that has no sha256sum), a runner tar not yet unpacked, a file that cannot
be read or is too large, no free-space figure when something must be sent: each is
answered by the runner's `status`, as before (`None` here). A device without a launcher
is answered here too: it has no runner, which is all a status would have said.
"""

from __future__ import annotations

import json
import secrets
from typing import Optional

from edgekit.bundle import Bundle
from edgekit.device.launcher import ARCHIVE_NAME, LAUNCHER_NAME, PACKAGE_NAME
from edgekit.device.state import META, RunnerError, check_name, reconciled
from edgekit.device.trust import digests_hash
from edgekit.errors import TransportError
from edgekit.fleet.inventory import Device
from edgekit.transport import Transport

__all__ = ["probe_status", "PROBE_LIMIT"]

PROBE_LIMIT = 65536  # bytes of a state or meta file the probe reads; a larger one is the runner's to read
# $1 root, $2 name, $3 version, $4 a random token, $5 the most bytes read of a file. Each item is
# "\nTOKEN KEY FLAG\n", then its bytes; FLAG 1: here (the bytes follow), 0: not there, x: there but unreadable.
SCRIPT = r"""r=$1 n=$2 v=$3 t=$4 most=$5
item() { printf '\n%s %s %s\n' "$t" "$1" "$2"; }
file() { if [ -f "$2" ] && [ -r "$2" ]; then item "$1" 1; dd if="$2" bs="$most" count=1 2>/dev/null
         elif [ -e "$2" ]; then item "$1" x; else item "$1" 0; fi; }
if [ -f "$r/bin/LAUNCHER" ]; then item launcher 1; else item launcher 0; fi
if [ -e "$r/bin/ARCHIVE" ]; then item pending 1; else item pending 0; fi
if h=$(cd "$r/bin" 2>/dev/null && set -- LAUNCHER && for m in PACKAGE/*.py PACKAGE/.*.py; do
       if [ -f "$m" ]; then set -- "$@" "$m"; fi; done && sha256sum -- "$@" 2>/dev/null); then
  item runner 1; printf '%s' "$h"; else item runner x; fi
file meta "$r/bundles/$n/$v/META"
file state "$r/state/$n.json"
if [ -L "$r/current/$n" ]; then if l=$(readlink "$r/current/$n"); then item link 1; printf '%s' "$l"
  else item link x; fi; else item link 0; fi
item trust 1; for k in "$r"/trust/*.pub; do if [ -e "$k" ]; then printf '%s\n' "${k##*/}"; fi; done
d=$r; while [ ! -d "$d" ] && [ "$d" != "$(dirname -- "$d")" ]; do d=$(dirname -- "$d"); done
if f=$(df -Pk -- "$d" 2>/dev/null); then item df 1; printf '%s' "$f"; else item df x; fi
""".replace("LAUNCHER", LAUNCHER_NAME).replace("ARCHIVE", ARCHIVE_NAME).replace("PACKAGE", PACKAGE_NAME) \
    .replace("META", META)


def probe_status(transport: Transport, device: Device, bundle: Bundle, runner_sha256: str, *,
                 timeout: float) -> Optional[dict]:
    """The part of the runner's status a push reads (runner_sha256, models[NAME] with current,
    previous and bundles[VERSION], trusted_keys, disk_free_bytes), from one shell command;
    None when the runner must be asked instead (see the module docstring). `runner_sha256`:
    the hash of this host's runner."""
    try:
        name, version = check_name(bundle.name, "name"), check_name(bundle.version, "version")
    except RunnerError:
        return None  # the runner refuses such names in its own words
    token = f"edgekit-probe-{secrets.token_hex(8)}"
    try:
        result = transport.run(["sh", "-c", SCRIPT, "edgekit-probe", device.root.rstrip("/") or "/", name, version,
                                token, str(PROBE_LIMIT + 1)], timeout=timeout)
    except TransportError:
        return None  # the runner's status says what is wrong, in its words
    items = _items(result.stdout, token) if result.ok else None
    if items is None or set(items) != {"launcher", "pending", "runner", "meta", "state", "link", "trust", "df"}:
        return None
    disk = _free_bytes(items["df"])
    meta = _meta(items["meta"])
    if items["launcher"][0] != "1":  # no runner: what a status would say, and whether the bundle is here all the same
        if meta is False or disk is None:
            return None
        return {"models": {name: {"current": None, "previous": None, "bundles": {version: meta}}},
                "runner_sha256": None, "trusted_keys": _lines(items["trust"]), "disk_free_bytes": disk,
                "note": "no edgekit runner installed yet"}
    if items["pending"][0] != "0" or _runner_hash(items["runner"]) != runner_sha256 or meta is False:
        return None
    state = _state(name, items["state"], items["link"])
    if state is None or (disk is None and not _same_sha(meta, bundle)):
        return None
    return {"models": {name: {**state, "bundles": {version: meta}}}, "runner_sha256": runner_sha256,
            "trusted_keys": _lines(items["trust"]), "disk_free_bytes": disk}


def _items(out: str, token: str) -> Optional[dict[str, tuple[str, str]]]:
    """{key: (flag, bytes)} from the probe's output."""
    items = {}
    for part in out.split(f"\n{token} ")[1:]:
        head, _, body = part.partition("\n")
        key, _, flag = head.partition(" ")
        if key in items:
            return None
        items[key] = (flag, body)
    return items


def _runner_hash(item: tuple[str, str]) -> Optional[str]:
    """The runner's tree hash from `sha256sum` lines ("HASH  PATH"), as runner_files names the files."""
    flag, text = item
    if flag != "1":
        return None
    digests = {}
    for line in text.splitlines():
        digest, _, path = line.partition(" ")
        path = path[1:] if path[:1] in (" ", "*") else None
        if len(digest) != 64 or not path or (path != LAUNCHER_NAME and not path.startswith(PACKAGE_NAME + "/")):
            return None  # an escaped name ("\\HASH ...") or an answer not from sha256sum
        digests[path] = digest.lower()
    return digests_hash(digests) if LAUNCHER_NAME in digests else None


def _json(item: tuple[str, str]):
    """A file's JSON object; None when there is no file; False when it cannot be read as the runner would."""
    flag, text = item
    if flag == "0":
        return None
    if flag != "1" or len(text.encode()) > PROBE_LIMIT or "\ufffd" in text:  # the runner reads UTF-8 strictly
        return False
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return value if isinstance(value, dict) else False


def _meta(item: tuple[str, str]):
    """What the runner's status lists for the bundle: {sha256, signer}, None, or False (ask the runner)."""
    meta = _json(item)
    return {"sha256": meta.get("sha256"), "signer": meta.get("signer")} if meta else meta


def _same_sha(meta, bundle: Bundle) -> bool:
    return isinstance(meta, dict) and meta.get("sha256") == bundle.sha256


def _state(name: str, state_item: tuple[str, str], link_item: tuple[str, str]) -> Optional[dict]:
    """{current, previous} as the runner's status would give them (Layout.read_state: the link
    wins over the state file), or None when either cannot be read here."""
    stored = _json(state_item)
    flag, target = link_item
    if stored is False or flag not in ("0", "1"):
        return None
    live = (target.rstrip("/").rsplit("/", 1)[-1] or None) if flag == "1" else None
    state, _ = reconciled(name, stored or {}, live)
    return {"current": state["current"], "previous": state["previous"]}


def _lines(item: tuple[str, str]) -> list[str]:
    return [ln for ln in item[1].splitlines() if ln]


def _free_bytes(item: tuple[str, str]) -> Optional[int]:
    """Available bytes from `df -Pk` (the field before the capacity's "%": a file system's name
    may hold spaces)."""
    flag, text = item
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if flag != "1" or len(lines) < 2:
        return None
    fields = lines[-1]
    at = next((i for i, f in enumerate(fields) if f.endswith("%") and f[:-1].isdigit()), None)
    if at is None or at < 1 or not fields[at - 1].isdigit():
        return None
    return int(fields[at - 1]) * 1024
