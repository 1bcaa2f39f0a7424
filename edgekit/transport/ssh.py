"""The ssh transport: one paramiko SSHClient per device, one shell session on it for its commands
(sshshell.py) and one SFTP session once a file is touched.

Host keys are checked before authentication (see hostkeys.py); commands are argument
lists quoted with shlex.join for the device's POSIX login shell; every file operation
is an SFTP request, never a shell command. paramiko, socket and OS errors become
edgekit errors in one place, `_translated`.
"""

from __future__ import annotations

import errno
import shlex
import socket
import stat
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional, Sequence

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

from edgekit.errors import ConnectError, Interrupted, RemoteCommandError, TransportError
from edgekit.transport.base import Cancel, Endpoint, Progress, RunResult, Transport
from edgekit.transport.hostkeys import HostKeyPolicy, edgekit_known_hosts, host_key_name, known_key_types, preferring
from edgekit.transport.sshconfig import Hop, resolve
from edgekit.transport.sshfeed import feed
from edgekit.transport.sshshell import Shell

__all__ = ["SSHTransport"]

KEEPALIVE_S = 10          # a probe every 10 s that the device must answer ...
KEEPALIVE_ANSWER_S = 20   # ... within 20 s: a frozen or vanished device is noticed within 30 s
IO_TIMEOUT_S = 120.0       # an SFTP request unanswered this long means the device is gone
CHUNK = 1 << 20            # local reads; split into pipelined SFTP writes of _write_size()
SFTP_WINDOW = 16 << 20     # a wide window keeps the pipe full on slow, far links
# AES-GCM first: paramiko's own order starts with aes-ctr + HMAC, which costs a second pass
# over every byte on both ends (8 uploads of 52 MB to loopback sshd: 1.57 s with aes128-ctr,
# 1.16-1.28 s with aes128-gcm, benchmarks/push_vs_scp.py's machine).
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


class SSHTransport(Transport):
    def __init__(self, endpoint: Endpoint, *, trust_new_hosts: bool = False, known_hosts: Optional[str] = None):
        self.name = endpoint.name
        self._timeout = endpoint.timeout
        self._own_known = edgekit_known_hosts(known_hosts)
        self._trust_new = trust_new_hosts
        self._clients: list[paramiko.SSHClient] = []  # jump hosts first, the device last
        self._sftp_client: Optional[paramiko.SFTPClient] = None
        self._write_most: Optional[int] = None  # the SFTP server's largest write, once asked
        self._shell: Optional[Shell] = None  # the session that runs commands, opened by the first
        self._lost: Optional[str] = None  # why the watchdog closed the connection
        route = resolve(endpoint)
        self._label = route.target.label
        try:
            self._client = self._connect_route(route.jumps + (route.target,))
        except BaseException:
            self.close()
            raise

    @property
    def _sftp(self) -> paramiko.SFTPClient:
        """The SFTP session, opened on first use: a device that is only asked something (a
        status, an unchanged re-push) costs one session and no sftp-server process."""
        if self._sftp_client is None:
            with self._translated(f"opening SFTP on {self._label}"):
                sftp = paramiko.SFTPClient.from_transport(self._client.get_transport(), window_size=SFTP_WINDOW)
                sftp.get_channel().settimeout(IO_TIMEOUT_S)
            self._sftp_client = sftp
        return self._sftp_client

    # -- connecting -------------------------------------------------------------------

    def _connect_route(self, hops: Sequence[Hop]) -> paramiko.SSHClient:
        sock = None
        if hops[0].proxy_command:
            with self._translated(f"starting ProxyCommand for {hops[0].label}", connecting=True):
                sock = paramiko.ProxyCommand(hops[0].proxy_command)
        for here, there in zip(hops, hops[1:]):
            client = self._login(here, sock)
            with self._translated(f"opening a tunnel from {here.label} to {there.label}", connecting=True):
                sock = client.get_transport().open_channel(
                    "direct-tcpip", (there.hostname, there.port), ("127.0.0.1", 0), timeout=self._timeout)
        return self._login(hops[-1], sock)

    def _login(self, end: Hop, sock) -> paramiko.SSHClient:
        missing = [p for p in end.identity_files if not Path(p).is_file()]
        if missing:
            raise ConnectError(f"cannot log in to {end.label}: identity file {missing[0]} does not exist; "
                               f"fix identity_file in the inventory or IdentityFile in the ssh config",
                               device=self.name)
        client = paramiko.SSHClient()
        self._clients.append(client)
        files = list(end.known_hosts)
        client.set_missing_host_key_policy(HostKeyPolicy(self.name, files, self._own_known, self._trust_new))
        known_types = known_key_types(host_key_name(end.hostname, end.port), [*files, self._own_known])
        t = self._timeout
        with self._translated(f"connecting to {end.label}", connecting=True):
            try:
                client.connect(end.hostname, end.port, username=end.user, sock=sock,
                               key_filename=list(end.identity_files) or None, look_for_keys=end.look_for_keys,
                               allow_agent=True, timeout=t, banner_timeout=t + 5, auth_timeout=t, channel_timeout=t,
                               transport_factory=_fast_transport(preferring(known_types)))
            except paramiko.SSHException as exc:
                transport = client.get_transport()
                if transport is not None and transport.is_active() and transport.host_key is None:
                    # paramiko stops waiting for the handshake after `timeout` without saying why (the
                    # banner timeout is set longer, so that this is the one that fires): it was a timeout
                    raise TimeoutError(str(exc)) from exc
                raise
            _Watchdog(self, client.get_transport()).start()
        return client

    # -- commands -----------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, timeout: Optional[float] = None,
            cancel: Optional[Cancel] = None) -> RunResult:
        """Run `argv` on the device in the connection's shell session (sshshell.py); each
        argument reaches the program as it is given. A program killed by a signal exits
        128 + the signal's number; -1 means the session ended before the command did."""
        label = shlex.join(str(a) for a in argv)[:80]
        with self._translated(f"running {label}"):
            if self._shell is None:
                self._shell = Shell(self._client.get_transport(), self._timeout)
            try:
                ended = self._shell.run(argv, timeout, cancel)
            except BaseException:
                self._close_shell()
                raise
            if ended.state != "done":
                self._close_shell()  # the command may still run: the next one gets a new session
            err = ended.err.decode(errors="replace")
            if ended.state == "cancelled":
                raise Interrupted(f"device {self.name}: stopped waiting for {argv[0]}: interrupted")
            if ended.state == "ended" and (self._lost or not self._client.get_transport().is_active()):
                raise TransportError(f"running {argv[0]} on {self.name}: the connection was lost "
                                     f"({self._lost or 'closed'})", device=self.name)
            if ended.state == "timeout":
                raise RemoteCommandError(f"{label} did not finish within {timeout:g}s on {self.name}",
                                         device=self.name, stderr=err[-2000:])
            return RunResult(-1 if ended.code is None else ended.code, ended.out.decode(errors="replace"), err)

    def _close_shell(self) -> None:
        shell, self._shell = self._shell, None
        if shell is not None:
            with suppress(paramiko.SSHException, OSError, EOFError):
                shell.close()

    # -- files ----------------------------------------------------------------------------

    def put(self, local: Path, remote: str, *, progress: Optional[Progress] = None) -> None:
        """Upload, continuing after an existing shorter `remote` (a cut upload); a longer
        one is started over. The caller checks the sha256 of the finished file."""
        local = Path(local)
        if not local.is_file():
            raise TransportError(f"cannot upload {local}: no such local file", device=self.name)
        total = local.stat().st_size
        hint = "; run it again to resume the upload"
        with self._translated(f"uploading {local.name} to {remote}", hint=hint):
            start = self._sftp_size(remote) or 0
            start = start if start <= total else 0
            # Writes go to explicit offsets (not O_APPEND): should the device's sftp-server of a
            # cut session still be flushing, it writes the same bytes at the same places.
            dst = self._sftp.open(remote, "r+b" if start else "wb", 0)
            try:
                dst.set_pipelined(True)  # don't wait for each write's answer: this is what makes it fast
                dst.MAX_REQUEST_SIZE = _write_size(self._sftp.get_channel(), dst.handle, self._write_limit())
                with local.open("rb") as src:
                    src.seek(start)
                    dst.seek(start)
                    self._send(src, dst, start, total, progress)
                dst.close()  # waits for every write's answer: a failed write surfaces here
            except BaseException:
                dst.set_pipelined(False)  # the answers may never come: close without waiting for them
                with suppress(Exception):
                    dst.close()
                raise

    def feed(self, argv: Sequence[str], local: Path, *, progress: Optional[Progress] = None,
             timeout: Optional[float] = None) -> RunResult:
        """Transport.feed in a session of its own (sshfeed.py)."""
        label = shlex.join(str(a) for a in argv)[:80]
        with self._translated(f"sending {Path(local).name} to {label}", hint="; run it again to resume the upload"):
            chan = self._client.get_transport().open_session(timeout=self._timeout)
            try:
                ended = feed(chan, argv, Path(local), progress, timeout, IO_TIMEOUT_S)
            finally:
                chan.close()
        if ended is None:
            raise RemoteCommandError(f"{label} did not finish within {timeout:g}s on {self.name}", device=self.name)
        return ended

    def _write_limit(self) -> int:
        """The most file data the device's SFTP server takes in one write: OpenSSH's says so when
        asked (limits@openssh.com, 255 KiB in 9.x); 32 KiB, what every SFTP server must take,
        from one that does not answer the question. Asked once per connection."""
        if self._write_most is None:
            try:
                kind, reply = self._sftp._request(CMD_EXTENDED, "limits@openssh.com")
                write = 0
                if kind == CMD_EXTENDED_REPLY:  # max packet, read and write lengths (0: not said), open handles
                    _packet, _read, write = reply.get_int64(), reply.get_int64(), reply.get_int64()
            except (IOError, paramiko.SSHException):
                write = 0
            self._write_most = min(write, 256 << 10) or 32768
        return self._write_most

    @staticmethod
    def _send(src, dst, done: int, total: int, progress: Optional[Progress]) -> None:
        if progress:
            progress(done, total)
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)

    def get(self, remote: str, local: Path) -> None:
        with self._translated(f"downloading {remote} to {local}"):
            with self._sftp.open(remote, "rb") as src:
                src.prefetch(src.stat().st_size)
                with open(local, "wb") as dst:
                    while chunk := src.read(CHUNK):
                        dst.write(chunk)

    def size(self, remote: str) -> Optional[int]:
        with self._translated(f"looking at {remote}"):
            return self._sftp_size(remote)

    def listdir(self, remote: str) -> list[str]:
        with self._translated(f"listing {remote}"):
            try:
                return sorted(self._sftp.listdir(remote))
            except FileNotFoundError:
                return []

    def makedirs(self, remote: str) -> None:
        with self._translated(f"creating directory {remote}"):
            self._makedirs(PurePosixPath(remote))

    def _makedirs(self, path: PurePosixPath) -> None:
        # Look before making, from the end: a directory that exists costs one round trip, a
        # new one two per level made (trying mkdir from / cost two for every level of the path).
        try:
            if not _is_dir(self._sftp.stat(str(path))):
                raise NotADirectoryError(errno.ENOTDIR, f"{path} exists and is not a directory")
            return
        except FileNotFoundError:
            pass
        if path.parent != path:
            self._makedirs(path.parent)
        try:
            self._sftp.mkdir(str(path))
        except OSError:
            # another writer just made it: fine if it is a directory
            if not _is_dir(self._sftp.stat(str(path))):
                raise NotADirectoryError(errno.ENOTDIR, f"{path} exists and is not a directory")

    def rename(self, src: str, dst: str) -> None:
        with self._translated(f"renaming {src} to {dst}"):
            self._sftp.posix_rename(src, dst)  # replaces dst atomically, unlike SFTP's plain rename

    def remove(self, remote: str) -> None:
        with self._translated(f"removing {remote}"):
            try:
                self._sftp.remove(remote)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        # Closing a connection that is already gone is not an error worth reporting.
        self._close_shell()
        sftp, self._sftp_client = self._sftp_client, None
        if sftp is not None:
            with suppress(paramiko.SSHException, OSError, EOFError):
                sftp.close()
        while self._clients:
            with suppress(paramiko.SSHException, OSError, EOFError):
                self._clients.pop().close()

    def _sftp_size(self, remote: str) -> Optional[int]:
        try:
            attrs = self._sftp.stat(remote)
        except FileNotFoundError:
            return None
        return attrs.st_size if stat.S_ISREG(attrs.st_mode or 0) else None  # as the local transport does

    # -- errors ---------------------------------------------------------------------------

    @contextmanager
    def _translated(self, action: str, *, connecting: bool = False, hint: str = "") -> Iterator[None]:
        """paramiko, socket and OS errors -> ConnectError (while connecting) or TransportError;
        `hint` is added when the connection was lost."""
        try:
            yield
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if connecting:
                raise ConnectError(f"{action} on {self.name}: {_why_not_connected(exc, self._timeout)}",
                                   device=self.name) from exc
            lost = not isinstance(exc, OSError) or exc.errno is None or isinstance(exc, TimeoutError)
            why = f"the connection was lost ({exc or type(exc).__name__})" if lost else exc.strerror or str(exc)
            raise TransportError(f"{action} on {self.name}: {why}{hint if lost else ''}", device=self.name) from exc


class _Watchdog(threading.Thread):
    """Asks the device every KEEPALIVE_S whether it is there (a global request it must answer:
    TCP alone keeps a frozen sshd's connection open for hours) and closes the connection
    when no answer comes within KEEPALIVE_ANSWER_S, so that no wait on it lasts."""

    def __init__(self, owner: "SSHTransport", transport: paramiko.Transport):
        super().__init__(name=f"edgekit-keepalive-{owner.name}", daemon=True)
        self._owner, self._transport = owner, transport

    def run(self) -> None:
        while self._transport.is_active():
            time.sleep(KEEPALIVE_S)
            answered = threading.Event()
            threading.Thread(target=self._ask, args=(answered,), daemon=True).start()
            if not answered.wait(KEEPALIVE_ANSWER_S) and self._transport.is_active():
                self._owner._lost = f"no answer to a keepalive within {KEEPALIVE_ANSWER_S} s"
                self._transport.close()
                return

    def _ask(self, answered: threading.Event) -> None:
        with suppress(Exception):
            self._transport.global_request("keepalive@openssh.com", wait=True)  # OpenSSH answers with a failure
            answered.set()


def _fast_transport(factory):
    """A Transport factory that offers FAST_CIPHERS first (SSH takes the client's first cipher
    that the server also has, so a server without GCM gets aes-ctr as before), over a TCP
    socket that neither holds back what it sends nor what it owes (_Prompt)."""
    def make(sock, **kwargs) -> paramiko.Transport:
        transport = factory(_Prompt.taking(sock), **kwargs)
        options = transport.get_security_options()
        options.ciphers = [c for c in FAST_CIPHERS if c in options.ciphers] + \
            [c for c in options.ciphers if c not in FAST_CIPHERS]
        return transport

    return make


class _Prompt(socket.socket):
    """A TCP socket that sends each write at once and acknowledges each read at once.

    A login and a session's opening are small messages that each wait for an answer, and on
    Linux each could wait 40 ms for a delayed ACK: paramiko leaves Nagle's algorithm on, so a
    message it wrote in two parts waited for the device's ACK of the first (three times in a
    login); and sshd, whose Nagle is on until a session starts, held its answer to the first
    channel open until this side acknowledged the notices it had sent just before. Loopback
    sshd: 80-120 ms to log in and open a session, 30-35 ms with both off."""

    @classmethod
    def taking(cls, sock):
        """`sock` as a _Prompt when it is a TCP socket (not a ProxyCommand or a jump host's channel)."""
        if type(sock) is not socket.socket or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return sock
        timeout = sock.gettimeout()
        prompt = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        prompt.settimeout(timeout)
        with suppress(OSError):
            prompt.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return prompt

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if QUICKACK is not None:
            with suppress(OSError):
                self.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)  # Linux sends the ACK it owes now
        return data


QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only; elsewhere the reads are plain


def _write_size(channel: paramiko.Channel, handle: bytes, most: int) -> int:
    """Bytes of file data per SFTP write: as many whole SSH packets as the server takes in one
    write (`most` bytes), at least one.

    paramiko writes 32768 bytes per request by default; with the request's header that is
    just over one channel packet (out_max_packet_size - 64 bytes of data), so every write
    went out as a full packet and a 29-byte one: twice the packets, each encrypted and
    MACed on its own. Filling 7 packets per write (OpenSSH takes 255 KiB) cuts the requests
    and their answers, each parsed in Python on this side, by 7 (8 uploads of 52 MB to
    loopback sshd: 0.10-0.11 s of the client's CPU a device instead of 0.13-0.15). The
    header is length, type, id, handle, offset and data length."""
    header = 4 + 1 + 4 + (4 + len(handle)) + 8 + 4
    packet = channel.out_max_packet_size - 64
    packets = max(1, (most + header) // packet)
    return max(1024, packets * packet - header)


def _why_not_connected(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, paramiko.PasswordRequiredException):
        return "the identity file is encrypted; add it to ssh-agent (ssh-add) or use a key without a passphrase"
    if isinstance(exc, paramiko.AuthenticationException):
        return (f"authentication failed ({exc}); check the user and identity_file, and that the public key "
                f"is in the device's authorized_keys")
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror}); check host in the inventory or HostName in ssh config"
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return (f"unreachable: no SSH answer within {timeout:g}s; check that the device is on, that the address "
                f"and port are right and that sshd runs there")
    if isinstance(exc, (paramiko.ssh_exception.NoValidConnectionsError, ConnectionRefusedError)):
        return "connection refused: nothing listens on that port; check that sshd runs there and the port is right"
    if isinstance(exc, paramiko.ChannelException):
        return f"the jump host could not open the connection ({exc.text})"
    if isinstance(exc, (paramiko.SSHException, EOFError)):
        return f"the SSH handshake failed ({exc or type(exc).__name__})"
    return f"unreachable: {exc.strerror or exc}; check the network path to the device"


def _is_dir(attrs: paramiko.SFTPAttributes) -> bool:
    return stat.S_ISDIR(attrs.st_mode or 0)
