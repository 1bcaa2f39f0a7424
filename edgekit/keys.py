"""Bundle signing keys: Ed25519 SSH keys, used through OpenSSH's `ssh-keygen -Y`.

    edgekit keys init            -> ~/.config/edgekit/keys/edgekit-bundle{,.pub}
    edgekit package ... --sign-key ~/.config/edgekit/keys/edgekit-bundle

A bundle's manifest.sig is an SSH signature (namespace ``edgekit-bundle``) of its
manifest.json, which holds every other file's sha256. Ed25519 signatures have no
randomness and SSH signatures no timestamp, so signing keeps bundles deterministic.
Devices check them with the same tool (edgekit.device.trust); copy the .pub file into
each device's ROOT/trust/ (or `edgekit keys trust`).
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from edgekit.errors import ConfigError, IntegrityError

__all__ = ["KeyPair", "KEY_NAME", "default_key_dir", "init_keys", "sign", "verify"]

KEY_NAME = "edgekit-bundle"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    fingerprint: str


def default_key_dir() -> Path:
    """$XDG_CONFIG_HOME/edgekit/keys, or ~/.config/edgekit/keys."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "edgekit" / "keys"


def _ssh_keygen(args: Sequence[str], *, what: str, stdin: Optional[bytes] = None) -> bytes:
    try:
        # A new session has no terminal, so a passphrase prompt fails instead of hanging.
        proc = subprocess.run(["ssh-keygen", *args], input=stdin if stdin is not None else b"",
                              capture_output=True, timeout=60, start_new_session=True)
    except FileNotFoundError as exc:
        raise ConfigError(f"{what}: ssh-keygen not found (install OpenSSH's client: openssh-client)") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        raise ConfigError(f"{what}: ssh-keygen failed: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc.stdout


def fingerprint(public: Path) -> str:
    out = _ssh_keygen(["-l", "-f", str(public)], what=f"key {public}").decode().split()
    return out[1] if len(out) > 1 else ""


def init_keys(out_dir: Optional[Path] = None, *, force: bool = False) -> KeyPair:
    """Make an Ed25519 key pair (no passphrase: packaging runs unattended) in `out_dir`."""
    out_dir = Path(out_dir).expanduser() if out_dir else default_key_dir()
    private, public = out_dir / KEY_NAME, out_dir / f"{KEY_NAME}.pub"
    if (private.exists() or public.exists()) and not force:
        raise ConfigError(f"{private} already exists; keep it, or pass --force to replace it, or --out DIR")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(out_dir, 0o700)
    except OSError as exc:
        raise ConfigError(f"--out {out_dir}: cannot create it ({exc.strerror})") from exc
    for path in (private, public):
        path.unlink(missing_ok=True)
    _ssh_keygen(["-q", "-t", "ed25519", "-N", "", "-C", f"{KEY_NAME}@{socket.gethostname()}", "-f", str(private)],
                what=f"key {private}")
    return KeyPair(private, public, fingerprint(public))


def sign(message: bytes, key: Path) -> bytes:
    """An SSH signature of `message` with the private key `key`."""
    key = Path(key).expanduser()
    if not key.is_file():
        raise ConfigError(f"--sign-key {key}: not found (make one with `edgekit keys init`)")
    if key.suffix == ".pub":
        raise ConfigError(f"--sign-key {key}: that is the public key; give the private key beside it")
    from edgekit.device.trust import NAMESPACE

    return _ssh_keygen(["-Y", "sign", "-q", "-f", str(key), "-n", NAMESPACE], what=f"--sign-key {key}", stdin=message)


def verify(message_path: Path, signature_path: Optional[Path], public_keys: Sequence[Path]) -> str:
    """The name of the key (file stem) in `public_keys` that signed the file; IntegrityError otherwise."""
    import shutil
    import tempfile

    from edgekit.device.state import RunnerError
    from edgekit.device.trust import trusted_keys, verify_signature

    with tempfile.TemporaryDirectory(prefix="edgekit-keys-") as tmp:
        for key in public_keys:
            shutil.copyfile(Path(key).expanduser(), Path(tmp) / Path(key).name)
        try:
            return verify_signature(str(message_path), str(signature_path) if signature_path else None,
                                    trusted_keys(tmp))
        except RunnerError as exc:
            raise IntegrityError(str(exc)) from exc
