"""A client for HAProxy's Runtime API: the stats socket and the master CLI socket.

One command per connection (send, half-close, read to EOF), which both HAProxy 2.6
and 3.x answer the same way. Only commands both versions support are used.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class RuntimeAPIError(Exception):
    """HAProxy answered, but refused the command (or the socket is unusable)."""


class SocketUnavailable(RuntimeAPIError):
    """The socket does not exist or nobody listens on it (HAProxy down or reloading)."""


@dataclass(frozen=True)
class ProcTable:
    """`show proc` on the master CLI."""

    master_pid: int
    reloads: int
    failed_reloads: int  # 2.6: failed reloads since the last success; -1 when not shown
    workers: tuple[int, ...]  # the current worker(s)
    old_workers: tuple[int, ...]  # from earlier loads, newest (fewest reloads) first

    @property
    def serving(self) -> tuple[int, ...]:
        """The worker(s) taking new connections. Normally the current ones; but after a
        failed reload HAProxy 3.x lists the worker that goes on serving among the old
        workers (2.6 keeps it under workers), so then it is the newest old one."""
        return self.workers or self.old_workers[:1]


@dataclass(frozen=True)
class ServerRuntimeState:
    """One line of `show servers state`."""

    backend: str
    server: str
    address: str
    port: int
    op_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_state: int  # bit flags: 0x01 forced maint, 0x08 forced drain, ...
    weight: int
    id: int = 0  # srv_id: a reload numbers servers by their position in the backend


@dataclass(frozen=True)
class ProcessLimits:
    """What the serving worker runs with (`show info`): HAProxy derives its global maxconn
    from the open-files limit, so on a node with a low limit it can be below the spec."""

    max_connections: int  # Maxconn
    max_sockets: int  # Maxsock
    open_files: int  # Ulimit-n


def parse_show_info(text: str) -> ProcessLimits:
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return ProcessLimits(int(fields["Maxconn"]), int(fields["Maxsock"]),
                             int(fields["Ulimit-n"]))
    except (KeyError, ValueError) as err:
        raise RuntimeAPIError(f"`show info` has no usable {err}") from err


def parse_show_proc(text: str) -> ProcTable:
    master_pid = reloads = 0
    failed = -1
    workers: list[int] = []
    old: list[tuple[int, int]] = []  # (reloads survived, pid)
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            section = stripped.lstrip("#").strip().lower()
            continue
        fields = stripped.split()
        if len(fields) < 2 or not fields[0].isdigit():
            continue
        pid, kind = int(fields[0]), fields[1]
        if kind == "master":
            master_pid = pid
            if len(fields) > 2 and fields[2].isdigit():
                reloads = int(fields[2])
            m = re.search(r"\[failed:\s*(\d+)\]", stripped)
            if m:
                failed = int(m.group(1))
        elif kind == "worker" and section.startswith("old"):
            old.append((int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 0, pid))
        elif kind == "worker":
            workers.append(pid)
    if not master_pid:
        raise RuntimeAPIError(f"unexpected `show proc` answer: {text[:200]!r}")
    old.sort(key=lambda entry: entry[0])  # stable: listing order among equals
    return ProcTable(master_pid, reloads, failed, tuple(workers), tuple(p for _, p in old))


def parse_servers_state(text: str) -> list[ServerRuntimeState]:
    out: list[ServerRuntimeState] = []
    columns: list[str] = []
    for line in text.splitlines():
        if line.startswith("# "):
            columns = line[2:].split()
            continue
        fields = line.split()
        if not columns or len(fields) < len(columns) - 1:
            continue  # the version line, or a blank one
        row = dict(zip(columns, fields, strict=False))
        try:
            out.append(ServerRuntimeState(
                backend=row["be_name"], server=row["srv_name"], address=row["srv_addr"],
                port=int(row.get("srv_port", "0")), op_state=int(row["srv_op_state"]),
                admin_state=int(row["srv_admin_state"]), weight=int(row["srv_uweight"]),
                id=int(row.get("srv_id", "0"))))
        except (KeyError, ValueError):
            continue
    return out


_SERVER_COMMANDS = ("set server ", "add server ", "enable health ", "enable agent ")


def _server_reply_ok(reply: str) -> bool:
    text = reply.strip()
    if not text:
        return True
    lowered = text.lower()
    if "invalid" in lowered or "can't" in lowered or "cannot" in lowered:
        return False
    # `set server addr` narrates what it did: "IP changed from ...", and when the address
    # was already that one "no need to change ..." (2.6, 3.2) or "nothing changed" (3.4).
    return ("changed from" in lowered or "no need to change" in lowered
            or lowered == "nothing changed")


class RuntimeClient:
    """Talks to one HAProxy: `<runtime_dir>/haproxy.sock` and `<runtime_dir>/master.sock`."""

    def __init__(self, runtime_dir: str | Path, *, timeout: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        runtime = Path(runtime_dir)
        self.stats_socket = runtime / "haproxy.sock"
        self.master_socket = runtime / "master.sock"
        self.timeout = timeout
        self._sleep = sleep

    # -- transport ---------------------------------------------------------------------

    def _exchange(self, path: Path, command: str, timeout: float | None = None) -> str:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout or self.timeout)
        try:
            try:
                sock.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError) as err:
                raise SocketUnavailable(f"{path}: {err.strerror}") from err
            payload = command if command.endswith("\n") else command + "\n"
            sock.sendall(payload.encode())
            sock.shutdown(socket.SHUT_WR)  # one command; HAProxy answers and closes
            chunks: list[bytes] = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except TimeoutError as err:
            raise RuntimeAPIError(f"{path}: no answer within {sock.gettimeout()}s") from err
        except OSError as err:
            if isinstance(err, RuntimeAPIError):
                raise
            raise SocketUnavailable(f"{path}: {err}") from err
        finally:
            sock.close()
        return b"".join(chunks).decode(errors="replace")

    def command(self, command: str) -> str:
        """One command on the stats socket (the current worker)."""
        return self._exchange(self.stats_socket, command)

    def master(self, command: str, timeout: float | None = None) -> str:
        """One command on the master CLI."""
        return self._exchange(self.master_socket, command, timeout)

    def _retry(self, call: Callable[[], str], deadline: float) -> str:
        delay = 0.02
        while True:
            try:
                return call()
            except SocketUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                self._sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- process management (master CLI) -------------------------------------------------

    def wait_until_up(self, timeout: float = 60.0) -> ProcTable:
        """Block until both sockets answer (HAProxy may start after the agent), with backoff."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                procs = self.show_proc()
                if procs.serving:
                    self.command("show info")
                    return procs
                error: Exception = RuntimeAPIError("no worker yet")
            except RuntimeAPIError as err:
                error = err
            if time.monotonic() + delay > deadline:
                raise SocketUnavailable(f"HAProxy not reachable after {timeout:.0f}s: {error}")
            log.debug("waiting for HAProxy: %s", error)
            self._sleep(delay)
            delay = min(delay * 2, 2.0)

    def show_proc(self) -> ProcTable:
        return parse_show_proc(self.master("show proc"))

    def limits(self) -> ProcessLimits:
        return parse_show_info(self.command("show info"))

    def worker_pid(self) -> int:
        """The PID of the process answering on the stats socket."""
        m = re.search(r"^Pid:\s*(\d+)", self.command("show info"), re.MULTILINE)
        if not m:
            raise RuntimeAPIError("`show info` has no Pid")
        return int(m.group(1))

    def reload(self, timeout: float = 30.0) -> ProcTable:
        """Reload through the master CLI; return once a new worker serves the stats socket.

        HAProxy 2.6 closes the connection without a word; 2.7+ answers `Success=0|1`
        once the new worker is up. Both are followed by polling `show proc`, which also
        catches a failed load (the failed counter moves and no new worker appears).
        """
        deadline = time.monotonic() + timeout
        before = self._retry(self.show_proc_text, min(deadline, time.monotonic() + 5.0))
        old = parse_show_proc(before)
        try:
            reply = self.master("reload", timeout=max(1.0, deadline - time.monotonic()))
        except SocketUnavailable:
            raise
        except RuntimeAPIError:
            reply = ""  # the master re-executes itself; the answer may never come
        if "Success=0" in reply:
            raise RuntimeAPIError("HAProxy could not load the new configuration: "
                                  + _alerts(reply))
        delay = 0.01
        while True:
            try:
                now = self.show_proc()
            except RuntimeAPIError:
                now = None  # the master is re-executing itself
            if now is not None:
                fresh = [p for p in now.workers if p not in old.workers
                         and p not in old.old_workers]
                if fresh:
                    self._wait_stats_socket(fresh[0], deadline)
                    return now
                if old.failed_reloads >= 0 and now.failed_reloads > old.failed_reloads:
                    raise RuntimeAPIError("HAProxy could not load the new configuration "
                                          "(the master kept the old worker)")
            if time.monotonic() > deadline:
                raise RuntimeAPIError(f"no new HAProxy worker within {timeout:.0f}s of reload")
            self._sleep(delay)
            delay = min(delay * 2, 0.2)

    def show_proc_text(self) -> str:
        return self.master("show proc")

    def _wait_stats_socket(self, pid: int, deadline: float) -> None:
        """The stats socket is handed over with the listeners: wait until the new worker has it."""
        while time.monotonic() < deadline:
            try:
                if self.worker_pid() == pid:
                    return
            except RuntimeAPIError:
                pass
            self._sleep(0.01)
        log.warning("new worker %d did not take over the stats socket in time", pid)

    # -- servers ---------------------------------------------------------------------------

    def servers_state(self, backend: str | None = None) -> list[ServerRuntimeState]:
        return parse_servers_state(self.command(f"show servers state {backend or ''}".strip()))

    def server_command(self, command: str) -> None:
        """A `set server`, `add server` or `enable health|agent` command; raises
        RuntimeAPIError when HAProxy refuses it."""
        if not command.startswith(_SERVER_COMMANDS):
            raise ValueError(f"not a server command: {command!r}")
        reply = self.command(command)
        if command.startswith("add server "):
            ok = reply.strip() == "New server registered."
        else:
            ok = _server_reply_ok(reply)
        if not ok:
            raise RuntimeAPIError(f"{command!r}: {reply.strip()}")

    # -- certificates ------------------------------------------------------------------------

    def replace_certificate(self, path: str, pem: str) -> None:
        """Hot-swap a certificate the running config loaded from `path` (set + commit).

        The PEM goes in as a payload, which ends at the first empty line: blank lines
        are dropped. The PEM is never part of an error message.
        """
        if not _FILE_NAME.match(Path(path).name) or any(c.isspace() for c in path):
            raise ValueError(f"unexpected certificate file name {path!r}")
        body = "\n".join(line for line in pem.splitlines() if line.strip())
        # The empty line ends the payload (EOF alone is not reliably enough).
        reply = self.command(f"set ssl cert {path} <<\n{body}\n\n")
        if not reply.strip().startswith("Transaction") or "Can't" in reply:
            self._abort(path)
            raise RuntimeAPIError(f"set ssl cert {path}: {_first_lines(reply)}")
        reply = self.command(f"commit ssl cert {path}")
        if "Success!" not in reply:
            self._abort(path)
            raise RuntimeAPIError(f"commit ssl cert {path}: {_first_lines(reply)}")

    def _abort(self, path: str) -> None:
        with contextlib.suppress(RuntimeAPIError):
            self.command(f"abort ssl cert {path}")


def _first_lines(reply: str, n: int = 3) -> str:
    return " ".join(line.strip() for line in reply.strip().splitlines()[:n])


def _alerts(reply: str) -> str:
    lines = [line.strip() for line in reply.splitlines() if "ALERT" in line]
    return " ".join(lines[:3]) or _first_lines(reply)
