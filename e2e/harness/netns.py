"""Backends that really own kwok Pod IPs: one network namespace per Pod.

For every (pod name, pod IP):

    host                                   netns rhe2e-<id>-<n>
    veth rh<id><n>  10.250.0.1/32  <---->  eth0  <pod IP>/32
    route <pod IP>/32 dev rh<id><n>         route 10.250.0.1/32 dev eth0 (nothing else)

No default route inside the namespace and nothing forwarded by the host, so nothing
can leave the machine. `ip route add unreachable 10.250.0.0/16` is put in place first
(and removed again if we added it), and before the backend is used
`ip route get <pod IP>` must name its veth. The HTTP server inside answers every GET
with the Pod name (and does no reverse DNS).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

HOST_CIDR = "10.250.0.0/16"
HOST_ADDRESS = "10.250.0.1"
BACKEND_PORT = 8080

# The server run inside each namespace: argv = [ip, port, pod name].
SERVER = r'''
import http.server, socketserver, sys
ip, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = (name + "\n").encode()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", name)
        self.end_headers()
        self.wfile.write(body)
    do_HEAD = do_GET
    def address_string(self):  # never a reverse DNS lookup
        return self.client_address[0]
    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    def handle_error(self, request, client_address):
        pass  # e.g. the proxy resetting an idle keep-alive connection: not news
    def server_bind(self):  # HTTPServer.server_bind calls getfqdn(): skip it
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = ip, port

Server((ip, port), Handler).serve_forever()
'''


class NetnsError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


def _unreachable_present(cidr: str) -> bool:
    out = ip("route", "show", "type", "unreachable").stdout
    return any(line.split()[:2] == ["unreachable", cidr] for line in out.splitlines())


@dataclass
class Backend:
    pod: str
    address: str
    netns: str
    host_veth: str
    port: int = BACKEND_PORT
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def route_device(self) -> str:
        """The device `ip route get <pod IP>` picks on the host."""
        fields = ip("route", "get", self.address).stdout.split()
        return fields[fields.index("dev") + 1] if "dev" in fields else ""

    def check_route(self) -> None:
        out = ip("route", "get", self.address).stdout.strip()
        fields = out.split()
        if "dev" not in fields or fields[fields.index("dev") + 1] != self.host_veth:
            raise NetnsError(f"{self.address} is not routed to {self.host_veth}: {out!r}")
        if "via" in fields:
            raise NetnsError(f"{self.address} goes through a gateway: {out!r}")


@dataclass
class Backends:
    """Namespaces + veths + routes + servers for some Pods. Use as a context manager."""

    log_dir: Path
    ident: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    backends: dict[str, Backend] = field(default_factory=dict)  # by pod name
    _added_guard: bool = False
    _counter: int = 0

    def __enter__(self) -> Backends:
        self.guard()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def guard(self) -> None:
        if not _unreachable_present(HOST_CIDR):
            ip("route", "add", "unreachable", HOST_CIDR)
            self._added_guard = True

    def add(self, pod: str, address: str) -> Backend:
        """A namespace owning `address` with an HTTP server answering `pod`."""
        if pod in self.backends:
            raise NetnsError(f"backend {pod} exists")
        if not address.startswith("10.244."):
            raise NetnsError(f"{address} is not a pod address (10.244.0.0/16)")
        self.guard()
        n = self._counter
        self._counter += 1
        b = Backend(pod, address, f"rhe2e-{self.ident}-{n}", f"rh{self.ident}{n}")
        self.backends[pod] = b
        try:
            ip("netns", "add", b.netns)
            ip("link", "add", b.host_veth, "type", "veth", "peer", "name", "eth0",
               "netns", b.netns)
            ip("-n", b.netns, "link", "set", "lo", "up")
            ip("-n", b.netns, "addr", "add", f"{address}/32", "dev", "eth0")
            ip("-n", b.netns, "link", "set", "eth0", "up")
            ip("-n", b.netns, "route", "add", f"{HOST_ADDRESS}/32", "dev", "eth0",
               "scope", "link")
            ip("addr", "add", f"{HOST_ADDRESS}/32", "dev", b.host_veth)
            ip("link", "set", b.host_veth, "up")
            ip("route", "add", f"{address}/32", "dev", b.host_veth, "src", HOST_ADDRESS)
            b.check_route()
            routes = ip("-n", b.netns, "route", "show").stdout
            if "default" in routes:
                raise NetnsError(f"{b.netns} has a default route: {routes!r}")
            b.log_path = self.log_dir / f"backend-{pod}.log"
            self.start_server(pod)
        except BaseException:
            self.remove(pod)
            raise
        return b

    def start_server(self, pod: str) -> None:
        """(Re)start the HTTP server in `pod`'s namespace; returns once it accepts."""
        b = self.backends[pod]
        assert b.log_path is not None
        with b.log_path.open("ab") as log:
            b.proc = subprocess.Popen(
                ["ip", "netns", "exec", b.netns, sys.executable, "-c", SERVER, b.address,
                 str(b.port), pod],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"})
        self._wait_listening(b)

    def stop_server(self, pod: str) -> None:
        """Kill the server (the Pod's IP stays, connections are refused)."""
        b = self.backends[pod]
        if b.proc is not None and b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait(5)

    def add_all(self, pods: Iterable[tuple[str, str]]) -> list[Backend]:
        return [self.add(pod, address) for pod, address in pods]

    @staticmethod
    def _wait_listening(b: Backend, timeout: float = 15.0) -> None:
        b.check_route()
        deadline = time.monotonic() + timeout
        while True:
            if b.proc is not None and b.proc.poll() is not None:
                log = b.log_path.read_text(errors="replace") if b.log_path else ""
                raise NetnsError(f"backend server for {b.pod} exited: {log[-500:]}")
            try:
                with socket.create_connection((b.address, b.port), timeout=1.0):
                    return
            except OSError as err:
                if time.monotonic() > deadline:
                    raise NetnsError(f"backend {b.pod} at {b.address}:{b.port}: {err}") from err
                time.sleep(0.05)

    def check_routes(self) -> None:
        for b in self.backends.values():
            b.check_route()

    def remove(self, pod: str) -> None:
        b = self.backends.pop(pod, None)
        if b is None:
            return
        if b.proc is not None and b.proc.poll() is None:
            b.proc.terminate()
            try:
                b.proc.wait(5)
            except subprocess.TimeoutExpired:
                b.proc.kill()
                b.proc.wait(5)
        # Any process still inside (e.g. the server if `ip netns exec` forked) is ours.
        pids = ip("netns", "pids", b.netns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        ip("route", "del", f"{b.address}/32", "dev", b.host_veth, check=False)
        ip("link", "del", b.host_veth, check=False)  # takes the peer with it
        ip("netns", "del", b.netns, check=False)

    def close(self) -> None:
        for pod in list(self.backends):
            self.remove(pod)
        if self._added_guard:
            ip("route", "del", "unreachable", HOST_CIDR, check=False)
            self._added_guard = False

    def by_address(self) -> dict[str, Backend]:
        return {b.address: b for b in self.backends.values()}


def leftovers() -> list[str]:
    """Namespaces a killed (SIGKILL) run left behind: every `rhe2e-*` one."""
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("rhe2e-")]


def remove_leftovers() -> list[str]:
    """Delete every `rhe2e-*` namespace, killing its processes (veth + route go with it).

    Only for manual cleanup after a killed run: it also removes a running session's.
    """
    removed = []
    for ns in leftovers():
        for pid in ip("netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        ip("netns", "del", ns, check=False)
        removed.append(ns)
    return removed


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="e2e backend namespaces")
    parser.add_argument("--remove-leftovers", action="store_true",
                        help="delete every rhe2e-* namespace (after a killed run)")
    if parser.parse_args().remove_leftovers:
        print("removed:", " ".join(remove_leftovers()) or "nothing")
    else:
        print("\n".join(leftovers()) or "no rhe2e-* namespaces")
