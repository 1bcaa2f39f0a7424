"""Hashes, and bundle signatures checked with OpenSSH's `ssh-keygen -Y verify`.

A manifest is signed with an Ed25519 SSH key in the namespace ``edgekit-bundle``. The
device keeps the public keys it trusts as ``trust/*.pub``; each file's stem is the
signer's name. Nothing here is hand-written crypto: hashing is hashlib, signatures are
OpenSSH's, so a device that trusts keys needs `ssh-keygen` (package openssh-client).

The host imports this module too (edgekit.keys), so both sides check the same way.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Dict, List, Optional, Tuple

from .state import RunnerError

__all__ = ["NAMESPACE", "sha256_file", "tree_hash", "digests_hash", "trusted_keys", "unreadable_trust",
           "verify_signature"]

NAMESPACE = "edgekit-bundle"
_KEY_LINE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-ssh-ed25519@openssh\.com)\s+([A-Za-z0-9+/=]+)")
_PRINCIPAL = re.compile(r"[^A-Za-z0-9._@-]")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_hash(files: Dict[str, bytes]) -> str:
    """One hash for a set of files (relative path -> content), independent of order."""
    return digests_hash({rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()})


def digests_hash(digests: Dict[str, str]) -> str:
    """tree_hash from each file's sha256 (relative path -> hex digest): what a host computes from
    the `sha256sum` of a device's files (edgekit.fleet.probe) without reading them."""
    h = hashlib.sha256()
    for rel in sorted(digests):
        h.update(f"{rel}\0{digests[rel]}\n".encode())
    return h.hexdigest()


def trusted_keys(trust_dir: str) -> List[Tuple[str, str]]:
    """(signer name, "type base64") for every key in trust/*.pub (a file that cannot be read
    gives none: unreadable_trust names it)."""
    keys = []
    for entry in _pub_files(trust_dir):
        principal = _PRINCIPAL.sub("_", entry[:-4]) or "key"
        for match in _key_lines(os.path.join(trust_dir, entry)):
            keys.append((principal, f"{match.group(1)} {match.group(2)}"))
    return keys


def unreadable_trust(trust_dir: str) -> List[str]:
    """The trust/*.pub files that hold no key line this device reads (or cannot be read)."""
    return [entry for entry in _pub_files(trust_dir) if not _key_lines(os.path.join(trust_dir, entry))]


def _pub_files(trust_dir: str) -> List[str]:
    return sorted(e for e in os.listdir(trust_dir) if e.endswith(".pub")) if os.path.isdir(trust_dir) else []


def _key_lines(path: str) -> list:
    """The key lines of one .pub file; none when it cannot be read (a folder, no permission)."""
    try:
        with open(path, errors="replace") as fh:
            return [m for m in (_KEY_LINE.match(line.strip()) for line in fh) if m]
    except OSError:
        return []


def verify_signature(message_path: str, signature_path: Optional[str], keys: List[Tuple[str, str]]) -> str:
    """The name of the trusted key that signed the file; RunnerError(kind="integrity") when
    the signature is missing, made by an untrusted key, or does not match the file."""
    if signature_path is None or not os.path.isfile(signature_path):
        raise RunnerError("the bundle is not signed, and this device trusts keys in trust/ "
                          "(sign it with `edgekit package --sign-key KEY`)", "integrity", 2)
    import tempfile  # here, not at the top: the runner's other commands start without it

    with tempfile.TemporaryDirectory(prefix="edgekit-trust-") as tmp:
        allowed = os.path.join(tmp, "allowed_signers")
        with open(allowed, "w") as fh:
            for principal, key in keys:
                fh.write(f'{principal} namespaces="{NAMESPACE}" {key}\n')
        found = _ssh_keygen(["-Y", "find-principals", "-s", signature_path, "-f", allowed])
        principal = found.stdout.strip().splitlines()[0] if found.returncode == 0 and found.stdout.strip() else None
        if principal is None:
            raise RunnerError("the bundle's signature is not made by a key in trust/ (or is malformed)",
                              "integrity", 2)
        with open(message_path, "rb") as message:
            checked = _ssh_keygen(["-Y", "verify", "-f", allowed, "-I", principal, "-n", NAMESPACE,
                                   "-s", signature_path], stdin=message)
    if checked.returncode != 0:
        raise RunnerError(f"the bundle's signature does not match its manifest (signer {principal}): "
                          f"{(checked.stderr or checked.stdout).strip()[:200]}", "integrity", 2)
    return principal


def _ssh_keygen(args: List[str], stdin=None) -> "subprocess.CompletedProcess":
    import subprocess

    try:
        return subprocess.run(["ssh-keygen", *args], stdin=stdin if stdin is not None else subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise RunnerError("this device trusts keys in trust/ but has no ssh-keygen to check signatures "
                          "(install openssh-client)", "integrity", 2) from exc
