"""`edgekit keys init|trust`: the key pair bundles are signed with, and devices that require it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekit.cli._common import JsonFlag, TargetsDir, console, print_json

keys_app = typer.Typer(help="Signing keys for bundles (Ed25519, via OpenSSH's ssh-keygen).", no_args_is_help=True)


@keys_app.command("init")
def init_cmd(
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Folder for the key pair (default: ~/.config/edgekit/keys).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key pair.")] = False,
    json: JsonFlag = False,
) -> None:
    """Make a signing key pair: sign bundles with `edgekit package --sign-key PRIVATE`, and put
    the .pub file in each device's trust/ (`edgekit keys trust`)."""
    from edgekit.keys import init_keys

    pair = init_keys(out, force=force)
    if json:
        print_json({"private": str(pair.private), "public": str(pair.public), "fingerprint": pair.fingerprint})
        return
    console.print(f"private key  {pair.private}\npublic key   {pair.public}\nfingerprint  {pair.fingerprint}",
                  highlight=False, soft_wrap=True)


@keys_app.command("trust")
def trust_cmd(
    public_key: Annotated[Path, typer.Argument(help="The .pub file from `edgekit keys init`.")],
    inventory: Annotated[Path, typer.Option("--inventory", "-i", help="The inventory: fleet/*.toml, or an Ansible INI or YAML inventory.")],
    device: Annotated[Optional[list[str]], typer.Option("--device", "-d", help="Only this device (repeatable).",
                                                        show_default=False)] = None,
    group: Annotated[Optional[list[str]], typer.Option("--group", "-g", help="Only devices with this tag (repeatable).",
                                                       show_default=False)] = None,
    trust_new_hosts: Annotated[bool, typer.Option("--trust-new-hosts", help="Accept SSH host keys not seen before.")] = False,
    targets_dir: TargetsDir = None,
    json: JsonFlag = False,
) -> None:
    """Copy PUBLIC_KEY into each device's trust/: from then on the device refuses bundles that
    are unsigned or signed by another key. Devices that trust keys need ssh-keygen."""
    from edgekit.cli.fleet import _devices, _finish
    from edgekit.errors import ConfigError
    from edgekit.fleet.push import trust_key
    from edgekit.keys import fingerprint

    public_key = public_key.expanduser()
    if not public_key.is_file() or public_key.suffix != ".pub":
        raise ConfigError(f"{public_key}: give an existing public key file ending in .pub")
    try:  # a device that trusts a line it cannot read refuses every bundle, signed or not
        fingerprint(public_key)
    except ConfigError as exc:
        raise ConfigError(f"{public_key}: not an OpenSSH public key ({str(exc).rsplit(': ', 1)[-1]})",
                          hint="give the .pub file that `edgekit keys init` wrote") from exc
    devices = _devices(inventory, device, group, targets_dir)
    result = trust_key(devices, public_key, trust_new_hosts=trust_new_hosts)
    _finish(result, json, ("key",))


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
