"""Start and stop component processes, each in its own session/process group.

A process may be stopped by the Python process that started it or, for a
detached cluster (`cli.py up`), by a later `cli.py down`. The latter cannot
`wait()` on it, so liveness is read from /proc, and the start time recorded at
spawn guards against killing an unrelated process that reused the PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces.
    return raw[raw.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None  # field 22 of stat: starttime


def _session_members(sid: int) -> list[int]:
    """Live (non-zombie) PIDs in session `sid`; our components are session leaders."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _proc_stat(int(entry))
        if fields and fields[0] != "Z" and int(fields[3]) == sid:  # state, ..., session
            members.append(int(entry))
    return members


@dataclass
class ManagedProcess:
    """One component process, started with `start_new_session=True`."""

    name: str
    pid: int
    start_ticks: int
    log_path: Path
    argv: list[str] = field(default_factory=list)
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def to_state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "log_path": str(self.log_path),
            "argv": self.argv,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ManagedProcess:
        return cls(
            name=state["name"],
            pid=int(state["pid"]),
            start_ticks=int(state["start_ticks"]),
            log_path=Path(state["log_path"]),
            argv=list(state.get("argv", [])),
        )

    def leader_alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        fields = _proc_stat(self.pid)
        if fields is None or fields[0] == "Z":
            return False
        return int(fields[19]) == self.start_ticks

    def alive(self) -> bool:
        """True while the leader or anything else in its session still runs."""
        if self.leader_alive():
            return True
        if _start_ticks(self.pid) not in (None, self.start_ticks):
            return False  # PID reused by an unrelated process: our session is gone
        return bool(_session_members(self.pid))

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def _signal(self, sig: signal.Signals) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self, grace_seconds: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after the grace period."""
        self._signal(signal.SIGTERM)
        if not self._wait_dead(grace_seconds):
            self._signal(signal.SIGKILL)
            self._wait_dead(5.0)
        if self.popen is not None:
            self.popen.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the process group at once (a crash, not a shutdown)."""
        self._signal(signal.SIGKILL)
        self._wait_dead(5.0)
        if self.popen is not None:
            self.popen.wait(timeout=5)

    def _wait_dead(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.1)
        return not self.alive()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: kill it when the starting thread dies, so a killed
    # test run cannot leave an API server behind. SIGKILL, not SIGTERM: all components
    # get it at once, and an API server whose etcd is gone takes minutes to shut down.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    detached: bool = False,
) -> ManagedProcess:
    """Start `argv` in its own session with stdout+stderr appended to `log_path`.

    Unless `detached`, the process is also tied to the lifetime of the caller.
    """
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=None if detached else _die_with_parent,
        )
    ticks = _start_ticks(popen.pid) or 0
    return ManagedProcess(name, popen.pid, ticks, log_path, list(argv), popen)


def clean_env() -> dict[str, str]:
    """Environment for components: no proxies, so loopback traffic stays on loopback."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env
