"""The ssh transport against real OpenSSH servers on 127.0.0.1 (see sshd.py)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.sshd import DroppingProxy, free_port, ssh_keygen, tree_state
from edgekit.errors import ConnectError, HostKeyError, RemoteCommandError, TransportError
from edgekit.transport import connect

pytestmark = pytest.mark.ssh

WEIRD_ROOT = "dev root 'single' \"double\" $(touch pwned) ;x"


@pytest.fixture
def fleet(sshd_fleet, monkeypatch):
    """One server whose device root has spaces, quotes and shell syntax in its path."""
    fleet = sshd_fleet(1, names=["cam 'one'"], roots=[WEIRD_ROOT])
    for key, value in fleet.env.items():
        monkeypatch.setenv(key, value)
    return fleet


def fingerprint(pub_path: Path) -> str:
    """OpenSSH's own SHA256 fingerprint of a public key file."""
    out = subprocess.run(["ssh-keygen", "-lf", str(pub_path)], check=True, capture_output=True, text=True).stdout
    return out.split()[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_files_and_commands_round_trip(fleet, tmp_path):
    server = fleet.servers[0]
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(3 << 20) + b"end")
    root = str(server.root)
    seen = []
    with connect(fleet.device(0).endpoint) as tr:
        tr.makedirs(f"{root}/incoming/deep er")
        tr.makedirs(f"{root}/incoming/deep er")  # again: already there is fine
        tr.put(payload, f"{root}/incoming/deep er/x.part", progress=lambda done, total: seen.append((done, total)))
        assert tr.size(f"{root}/incoming/deep er/x.part") == payload.stat().st_size
        tr.rename(f"{root}/incoming/deep er/x.part", f"{root}/incoming/deep er/x")
        assert tr.listdir(f"{root}/incoming/deep er") == ["x"]
        tr.get(f"{root}/incoming/deep er/x", tmp_path / "back.bin")
        result = tr.run(["sha256sum", f"{root}/incoming/deep er/x"])
        tr.remove(f"{root}/incoming/deep er/x")
        tr.remove(f"{root}/incoming/deep er/x")  # absent: no error
        assert tr.size(f"{root}/incoming/deep er/x") is None
        assert tr.listdir(f"{root}/no such dir") == []
        assert tr.size(f"{root}/incoming") is None  # a directory is not a file
        failing = tr.run(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert sha256(tmp_path / "back.bin") == sha256(payload)
    assert result.ok and result.stdout.split()[0] == sha256(payload)
    assert seen[0] == (0, payload.stat().st_size) and seen[-1] == (payload.stat().st_size,) * 2
    assert (failing.exit_code, failing.stdout, failing.stderr) == (7, "out\n", "err\n")
    assert not (server.root / "pwned").exists() and not (server.root.parent / "pwned").exists()


def test_arguments_reach_the_program_literally(fleet, tmp_path):
    marker = tmp_path / "pwned"
    args = ["a b", "'q'", '"dq"', f"$(touch {marker})", f"`touch {marker}`", f"; touch {marker}", "*", "", "line\nbreak",
            "back\\slash \\n \\c \\0101 %b %s"]
    with connect(fleet.device(0).endpoint) as tr:
        result = tr.run(["python3", "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *args])
    assert result.ok, result.stderr
    assert json.loads(result.stdout) == args
    assert not marker.exists()


def test_unknown_host_is_refused_then_trusted_on_request(fleet, tmp_path):
    server = fleet.servers[0]
    own = tmp_path / "edgekit_known_hosts"
    with pytest.raises(HostKeyError) as refused:
        connect(fleet.device(0).endpoint, known_hosts=str(own))
    fp = fingerprint(server.dir / "ssh_host_ed25519_key.pub")
    assert f"unknown host key for [127.0.0.1]:{server.port} (ssh-ed25519 {fp})" in str(refused.value)
    assert "--trust-new-hosts" in str(refused.value) and refused.value.device == server.name
    assert server.accepted_logins() == 0 and not own.exists()

    with connect(fleet.device(0).endpoint, known_hosts=str(own), trust_new_hosts=True) as tr:
        assert tr.run(["true"]).ok
    assert own.read_text() == server.known_hosts_line() + "\n"
    with connect(fleet.device(0).endpoint, known_hosts=str(own)) as tr:  # now known: no flag needed
        assert tr.run(["true"]).ok
    assert own.read_text().count("\n") == 1


def test_changed_host_key_is_refused_and_nothing_is_sent(fleet, tmp_path):
    server = fleet.servers[0]
    impostor = "ssh-ed25519 " + ssh_keygen(tmp_path / "other_host_key").split()[1]
    own = tmp_path / "known_hosts"
    own.write_text(f"# an earlier install\n[127.0.0.1]:{server.port} {impostor}\n")
    before = tree_state(server.root)
    with pytest.raises(HostKeyError) as refused:
        connect(fleet.device(0).endpoint, known_hosts=str(own), trust_new_hosts=True)  # accept-new never replaces a key
    message = str(refused.value)
    assert f"HOST KEY CHANGED for [127.0.0.1]:{server.port}" in message
    assert fingerprint(tmp_path / "other_host_key.pub") in message
    assert fingerprint(server.dir / "ssh_host_ed25519_key.pub") in message
    assert f"{own}:2" in message
    assert server.accepted_logins() == 0  # refused before authentication
    assert tree_state(server.root) == before
    assert own.read_text().count("\n") == 2


def test_hashed_entry_in_the_users_known_hosts_is_honoured(fleet, tmp_path, monkeypatch):
    server = fleet.servers[0]
    user_known = tmp_path / "user_known_hosts"
    user_known.write_text(server.known_hosts_line() + "\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(user_known)], check=True, capture_output=True)
    assert user_known.read_text().startswith("|1|")  # OpenSSH's HashKnownHosts form
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n    UserKnownHostsFile {user_known}\n    GlobalKnownHostsFile /dev/null\n")
    monkeypatch.setenv("EDGEKIT_SSH_CONFIG", str(config))
    own = tmp_path / "edgekit_known_hosts"
    with connect(fleet.device(0).endpoint, known_hosts=str(own)) as tr:
        assert tr.run(["true"]).ok
    assert not own.exists()  # known already: edgekit's own file is not touched


def test_unreachable_device_fails_fast(fleet):
    start = time.monotonic()
    with pytest.raises(ConnectError, match="connection refused") as refused:
        connect(fleet.device(0, port=free_port()).endpoint)
    assert time.monotonic() - start < 3 and refused.value.device == fleet.servers[0].name


def test_silent_port_times_out(fleet):
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:  # accepts TCP, never says a word
        start = time.monotonic()
        with pytest.raises(ConnectError) as timed_out:
            connect(fleet.device(0, port=silent.getsockname()[1], connect_timeout=1.0).endpoint)
    assert time.monotonic() - start < 5
    assert "no SSH answer within 1s" in str(timed_out.value)


def test_authentication_failures_say_what_to_do(fleet, tmp_path):
    ssh_keygen(tmp_path / "stranger")
    with pytest.raises(ConnectError, match="authentication failed.*authorized_keys"):
        connect(fleet.device(0, identity_file=str(tmp_path / "stranger")).endpoint)
    with pytest.raises(ConnectError, match="identity file .*missing_key does not exist"):
        connect(fleet.device(0, identity_file=str(tmp_path / "missing_key")).endpoint)


def test_cut_upload_resumes_where_it_stopped(fleet, tmp_path):
    server = fleet.servers[0]
    payload = tmp_path / "bundle.bin"
    payload.write_bytes(os.urandom(8 << 20))
    total = payload.stat().st_size
    remote = f"{server.root}/bundle.part"
    known = tmp_path / "proxy_known_hosts"

    with DroppingProxy(server.port, drop_after=3 << 20) as proxy:
        known.write_text(server.known_hosts_line(port=proxy.port) + "\n")
        tr = connect(fleet.device(0, port=proxy.port).endpoint, known_hosts=str(known))
        with pytest.raises(TransportError, match="connection was lost.*resume"):
            tr.put(payload, remote)
        tr.close()
        assert proxy.dropped.is_set()
    server.wait_sessions_closed()  # the cut session's sftp-server may still be writing what it got
    partial = (server.root / "bundle.part").stat().st_size
    assert 0 < partial < total
    assert (server.root / "bundle.part").read_bytes() == payload.read_bytes()[:partial]

    starts = []
    with DroppingProxy(server.port) as proxy:
        known.write_text(server.known_hosts_line(port=proxy.port) + "\n")
        with connect(fleet.device(0, port=proxy.port).endpoint, known_hosts=str(known)) as tr:
            tr.put(payload, remote, progress=lambda done, _: starts.append(done))
            remote_sha = tr.run(["sha256sum", remote]).stdout.split()[0]
        sent_second_time = proxy.bytes_up
    assert starts[0] == partial
    assert sent_second_time < total - partial + (1 << 20)  # the rest plus protocol overhead, not the whole file
    assert remote_sha == sha256(payload)


def test_longer_remote_file_is_started_over(fleet, tmp_path):
    server = fleet.servers[0]
    (server.root / "f.part").write_bytes(b"x" * 5000)
    (tmp_path / "f").write_bytes(b"y" * 1000)
    with connect(fleet.device(0).endpoint) as tr:
        tr.put(tmp_path / "f", f"{server.root}/f.part")
    assert (server.root / "f.part").read_bytes() == b"y" * 1000


def test_file_errors_name_the_path(fleet, tmp_path):
    root = fleet.servers[0].root
    (tmp_path / "f").write_bytes(b"data")
    (root / "plain").write_text("not a dir")
    with connect(fleet.device(0).endpoint) as tr:
        with pytest.raises(TransportError, match="downloading .*nothing-here") as missing:
            tr.get(f"{root}/nothing-here", tmp_path / "out")
        assert "resume" not in str(missing.value)
        with pytest.raises(TransportError, match="uploading f to .*no-dir/f"):
            tr.put(tmp_path / "f", f"{root}/no-dir/f")
        with pytest.raises(TransportError, match="creating directory .*plain/sub"):
            tr.makedirs(f"{root}/plain/sub")
        with pytest.raises(TransportError, match="no such local file"):
            tr.put(tmp_path / "absent", f"{root}/absent")


def test_run_reads_both_streams_and_honours_timeout(fleet):
    script = "import sys; sys.stderr.write('e' * 3000000); sys.stdout.write('o' * 3000000)"
    with connect(fleet.device(0).endpoint) as tr:
        result = tr.run(["python3", "-c", script], timeout=30)
        assert (len(result.stdout), len(result.stderr)) == (3000000, 3000000)
        start = time.monotonic()
        with pytest.raises(RemoteCommandError, match="did not finish within 1s"):
            tr.run(["sleep", "30"], timeout=1)
        assert time.monotonic() - start < 5
        assert tr.run(["true"]).ok  # the connection survives a timed-out command


def test_commands_share_one_shell_session_and_keep_their_exit_status(fleet):
    server = fleet.servers[0]
    sessions = lambda: server.log.read_text().count("Starting session: command")  # noqa: E731
    before = sessions()
    with connect(fleet.device(0).endpoint) as tr:
        codes = [tr.run(["sh", "-c", f"exit {n}"]).exit_code for n in (0, 3, 255)]
        killed = tr.run(["sh", "-c", "kill -9 $$"])
        printed = tr.run(["printf", "no newline at the end"])
        assert sessions() - before == 1  # one login shell for all of them
    assert codes == [0, 3, 255] and killed.exit_code == 128 + 9
    assert printed.stdout == "no newline at the end" and printed.ok


def test_ssh_config_alias_and_inventory_precedence(fleet, tmp_path, monkeypatch):
    server = fleet.servers[0]
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host edge-alias\n"
        f"    HostName 127.0.0.1\n    Port {server.port}\n    User root\n"
        f"    IdentityFile {fleet.client_key}\n    UserKnownHostsFile /dev/null\n"
        "Host edge-wrong-port\n"
        f"    HostName 127.0.0.1\n    Port {free_port()}\n    User root\n    IdentityFile {fleet.client_key}\n")
    monkeypatch.setenv("EDGEKIT_SSH_CONFIG", str(config))
    bare = dict(port=None, user=None, identity_file=None)
    with connect(fleet.device(0, host="edge-alias", **bare).endpoint) as tr:
        assert tr.run(["id", "-un"]).stdout.strip() == "root"
    with connect(fleet.device(0, host="edge-wrong-port", **{**bare, "port": server.port}).endpoint) as tr:
        assert tr.run(["true"]).ok  # the inventory's port wins over the config's
    with pytest.raises(ConnectError, match="connection refused"):
        connect(fleet.device(0, host="edge-wrong-port", **bare).endpoint)


def test_proxy_jump_through_another_device(sshd_fleet, monkeypatch):
    fleet = sshd_fleet(2)
    for key, value in fleet.env.items():
        monkeypatch.setenv(key, value)
    jump, target = fleet.servers
    with connect(fleet.device(1, proxy_jump=f"root@127.0.0.1:{jump.port}").endpoint) as tr:
        assert tr.run(["true"]).ok
    assert jump.accepted_logins() == 1 and target.accepted_logins() == 1  # nothing else logs in to the jump host


def test_fixture_inventory_loads_with_awkward_names(fleet):
    from edgekit.fleet.inventory import load_inventory

    offline = {"name": "offline \"x\"", "host": "127.0.0.1", "port": free_port(), "target": "host-cpu"}
    inventory = load_inventory(fleet.write_inventory(extra=[offline]))
    assert list(inventory.devices[:1]) == fleet.devices()
    assert inventory.devices[0].root == str(fleet.servers[0].root) and "'single'" in inventory.devices[0].root
    assert inventory.devices[1].name == 'offline "x"'


def _counting_upload(tr, payload: Path, remote: str) -> tuple[int, int]:
    """(SSH packets, SFTP writes) that tr.put(payload, remote) sent."""
    from paramiko.sftp import CMD_WRITE

    ssh, sftp = tr._client.get_transport(), tr._sftp  # the SFTP session opens first: its packets are not the upload's
    packets, writes = [], []
    send, ask = ssh.packetizer.send_message, sftp._async_request
    ssh.packetizer.send_message = lambda message: (packets.append(1), send(message))[1]
    sftp._async_request = lambda fileobj, t, *args: (writes.append(1) if t == CMD_WRITE else None,
                                                     ask(fileobj, t, *args))[1]
    tr.put(payload, remote)
    ssh.packetizer.send_message, sftp._async_request = send, ask
    return len(packets), len(writes)


def test_uploads_prefer_aes_gcm_and_send_full_packets_in_few_writes(fleet, tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(1 << 20))
    remote = f"{fleet.servers[0].root}/payload.part"
    with connect(fleet.device(0).endpoint) as tr:
        ssh = tr._client.get_transport()
        assert ssh.local_cipher == ssh.remote_cipher == "aes128-gcm@openssh.com"
        packets, writes = _counting_upload(tr, payload, remote)
    assert sha256(Path(remote)) == sha256(payload)
    # 32 KiB writes (paramiko's default) went out as two packets each: 64 and more for 1 MiB
    assert packets <= (1 << 20) // 32000 + 6, packets
    # OpenSSH's sftp-server takes 255 KiB a write (limits@openssh.com): 7 packets' worth each
    assert writes <= (1 << 20) // 200_000 + 1, writes


def test_the_connection_sends_and_acknowledges_without_delay(fleet):
    """Nagle's algorithm off and each read acknowledged at once: a login and a session's
    opening then wait for no delayed ACK (edgekit.transport.ssh._Prompt)."""
    with connect(fleet.device(0).endpoint) as tr:
        sock = tr._client.get_transport().sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert tr.run(["echo", "still a socket"]).stdout == "still a socket\n"
        assert type(sock).recv is not socket.socket.recv


def test_a_server_that_does_not_say_its_limits_gets_one_packet_writes(fleet, tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom((1 << 20) + 5))
    remote = f"{fleet.servers[0].root}/payload.part"
    with connect(fleet.device(0).endpoint) as tr:
        sftp = tr._sftp
        request = sftp._request

        def no_limits(t, *args):
            if args[:1] == ("limits@openssh.com",):
                raise IOError("Operation unsupported")  # what paramiko raises for SSH_FX_OP_UNSUPPORTED
            return request(t, *args)
        sftp._request = no_limits
        packets, writes = _counting_upload(tr, payload, remote)
    assert sha256(Path(remote)) == sha256(payload)
    assert writes >= (1 << 20) // 32768 and packets <= writes + 6, (packets, writes)


def test_a_server_without_aes_gcm_still_takes_uploads(fleet, tmp_path):
    server = fleet.servers[0]
    server.stop()
    config = server.dir / "sshd_config"
    config.write_text(config.read_text() + "Ciphers aes128-ctr\n")
    server.start()
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom((1 << 20) + 17))
    with connect(fleet.device(0).endpoint) as tr:
        assert tr._client.get_transport().local_cipher == "aes128-ctr"
        tr.put(payload, f"{server.root}/payload.part")
    assert sha256(server.root / "payload.part") == sha256(payload)


def test_makedirs_asks_once_for_a_directory_that_exists_and_makes_only_what_is_missing(fleet):
    root = fleet.servers[0].root
    with connect(fleet.device(0).endpoint) as tr:
        calls = []
        for name in ("stat", "mkdir"):
            real = getattr(tr._sftp, name)
            setattr(tr._sftp, name, lambda path, *a, _real=real, _name=name: (calls.append((_name, path)), _real(path, *a))[1])
        tr.makedirs(f"{root}/a/b/c")
        made = [path for name, path in calls if name == "mkdir"]
        calls.clear()
        tr.makedirs(f"{root}/a/b/c")
    assert made == [f"{root}/a", f"{root}/a/b", f"{root}/a/b/c"] and (root / "a" / "b" / "c").is_dir()
    assert calls == [("stat", f"{root}/a/b/c")]  # round trips matter on a far link


def test_an_upload_survives_rekeying_with_aes_gcm(fleet, tmp_path):
    # paramiko rekeys every 512 MiB; a bundle that big would rekey mid-upload. Rekey every MiB here.
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(5 << 20))
    remote = fleet.servers[0].root / "payload.part"
    with connect(fleet.device(0).endpoint) as tr:
        ssh = tr._client.get_transport()
        ssh.packetizer.REKEY_BYTES = 1 << 20
        kex_inits = []
        send_kex_init = ssh._send_kex_init
        ssh._send_kex_init = lambda: (kex_inits.append(1), send_kex_init())[1]
        tr.put(payload, str(remote))
        assert tr.run(["true"]).ok and ssh.local_cipher == "aes128-gcm@openssh.com"
    # at least one key exchange fell inside the upload (after its first MiB); how many depends
    # on how fast the handshakes go beside the data, so a loaded host sees fewer
    assert kex_inits and sha256(remote) == sha256(payload)


def test_invoke_is_imported_only_when_an_ssh_config_needs_match_exec(tmp_path):
    # paramiko imports invoke for `Match exec` alone; edgekit defers it (most of paramiko's import time)
    config = tmp_path / "ssh_config"
    config.write_text(f'Match exec "test -e {tmp_path}"\n    User from-match-exec\n')
    code = ("import sys; from edgekit.transport import defer_invoke\n"
            "print('invoke' in sys.modules)\n"  # importing edgekit leaves a library user's invoke alone
            "defer_invoke()\n"  # as the edgekit command does first
            "from edgekit.transport.sshconfig import resolve; from edgekit.transport.base import Endpoint\n"
            "print('invoke.tasks' in sys.modules)\n"
            "route = resolve(Endpoint(name='d', transport='ssh', root='/r', timeout=5, host='cam'))\n"
            "print(route.target.user, 'invoke.tasks' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "EDGEKIT_SSH_CONFIG": str(config)}).stdout.split()
    assert out == ["False", "False", "from-match-exec", "True"], out


def test_a_simulated_device_logs_in_with_the_home_it_is_given(sshd_fleet, tmp_path, monkeypatch):
    """push_vs_scp.py: the sessions' login shell reads its rc files from the HOME the device is given."""
    home = tmp_path / "plain home"
    home.mkdir()
    fleet = sshd_fleet(1, login_home=home)
    for key, value in fleet.env.items():
        monkeypatch.setenv(key, value)
    with connect(fleet.device(0).endpoint) as tr:
        assert tr.run(["sh", "-c", 'printf %s "$HOME"']).stdout == str(home)


# A receiving command as Transport.feed expects one: it names the bytes it has, then reads the
# rest from stdin into OUT (appending), and prints how many it read; REFUSE_AT: it stops reading there.
RECEIVER = r"""
import os, sys
out, refuse_at = sys.argv[1], int(sys.argv[2])
have = os.path.getsize(out) if os.path.exists(out) else 0
print("offset", have, flush=True)
got = 0
with open(out, "ab") as f:
    while True:
        chunk = sys.stdin.buffer.read(min(1 << 16, refuse_at - got) if refuse_at >= 0 else 1 << 16)
        if not chunk:
            break
        f.write(chunk)
        got += len(chunk)
        if 0 <= refuse_at <= got:
            print("refused at", got, flush=True)
            sys.exit(2)
print("read", got)
"""


@pytest.mark.parametrize("kind", ["ssh", "local"])
def test_feed_sends_from_the_offset_named_and_stops_when_the_command_ends(fleet, tmp_path, kind):
    from edgekit.fleet.inventory import Device

    data = os.urandom(3 << 20)
    local = tmp_path / "data.bin"
    local.write_bytes(data)
    device = fleet.device(0) if kind == "ssh" else Device(name="d", transport="local", root=str(tmp_path / "dev"),
                                                          target="host-cpu", python=sys.executable)
    out = tmp_path / f"{kind}-received.bin"
    out.write_bytes(data[:12345])  # what a cut transfer left
    seen = []
    with connect(device.endpoint) as tr:
        python = "python3" if kind == "ssh" else sys.executable
        done = tr.feed([python, "-c", RECEIVER, str(out), "-1"], local, progress=lambda d, t: seen.append((d, t)))
        assert done.ok and done.stdout.strip() == f"read {len(data) - 12345}", done
        assert out.read_bytes() == data and seen[0] == (12345, len(data)) and seen[-1] == (len(data), len(data))
        out.unlink()
        refused = tr.feed([python, "-c", RECEIVER, str(out), str(1 << 20)], local, timeout=30)
        assert refused.exit_code == 2 and refused.stdout.strip() == f"refused at {1 << 20}", refused
        said = tr.feed([python, "-c", "print('no offset here'); import sys; sys.exit(3)"], local)
        assert said.exit_code == 3 and said.stdout.strip() == "no offset here"
        if kind == "ssh":
            killed = tr.feed(["sh", "-c", "kill -9 $$"], local)
            assert killed.exit_code == 128 + 9  # a signal is not taken for a lost connection
