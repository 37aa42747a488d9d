"""Clients reach the proxy through its Service, as a client in the cluster would
(E2E_CLUSTER=kubeconfig with E2E_PROXY_ACCESS=service, the real-Pods tier).

`kubectl port-forward` (the kind default) tunnels through the API server to one Pod,
past the Service and kube-proxy. On the real-Pods tier the host routes the Service
range to kube-proxy's DNAT (e2e/cluster/node.py), so a connection to the proxy
Service's ClusterIP goes exactly where an in-cluster client's would: kube-proxy picks
a ready proxy Pod per connection. The traffic helpers (e2e/harness/traffic.py) only
ever connect to 127.0.0.1, so a ServiceRelay listens there and opens one connection to
ClusterIP:port per client connection, copying bytes both ways (half-close included,
for requests whose client shuts down its side).

Network safety: before the first connection the relay checks that the kernel routes
the ClusterIP locally (not via the default route, which leaves the machine).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import threading
from dataclasses import dataclass, field

ACCESS_ENV = "E2E_PROXY_ACCESS"
PORT_FORWARD = "port-forward"
SERVICE = "service"
ACCESSES = (PORT_FORWARD, SERVICE)
BUFFER = 65536


class RouteError(RuntimeError):
    """The address would leave this machine."""


def proxy_access(environ: dict[str, str] | None = None) -> str:
    """How kubeconfig mode reaches proxy listeners: `port-forward` (default) or `service`."""
    value = ((environ if environ is not None else os.environ).get(ACCESS_ENV) or PORT_FORWARD)
    value = value.strip().lower()
    if value not in ACCESSES:
        raise ValueError(f"{ACCESS_ENV}={value!r}: use one of {', '.join(ACCESSES)}")
    return value


def route_of(address: str) -> dict[str, str]:
    """`ip -j route get ADDRESS`: the route the kernel would use (dev, prefsrc, gateway)."""
    out = subprocess.run(["ip", "-j", "route", "get", address], capture_output=True,
                         text=True, check=False, timeout=10)
    if out.returncode != 0:
        raise RouteError(f"ip route get {address}: {out.stderr.strip() or 'no route'}")
    routes = json.loads(out.stdout or "[]")
    if not routes:
        raise RouteError(f"ip route get {address}: no route")
    return {k: str(v) for k, v in routes[0].items()}


def check_local_route(address: str) -> dict[str, str]:
    """The route to `address`, refusing one through a gateway (the default route):
    every test address must stay on this machine."""
    ipaddress.ip_address(address)  # a literal address, never a name to resolve
    route = route_of(address)
    if route.get("gateway") or route.get("type") in ("unreachable", "blackhole", "prohibit"):
        raise RouteError(f"{address} is not routed locally ({route}): refusing to send to it")
    return route


@dataclass
class ServiceRelay:
    """127.0.0.1:<local_port> -> target_host:target_port, one upstream connection per
    client connection, until stop()."""

    target_host: str
    target_port: int
    connect_timeout: float = 5.0
    local_port: int = 0
    connections: int = 0
    _listener: socket.socket | None = field(default=None, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)

    def start(self) -> int:
        check_local_route(self.target_host)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.local_port))
        listener.listen(256)
        listener.settimeout(0.5)
        self._listener = listener
        self.local_port = listener.getsockname()[1]
        accept = threading.Thread(target=self._accept_loop, daemon=True,
                                  name=f"relay-{self.local_port}")
        accept.start()
        self._threads.append(accept)
        return self.local_port

    def alive(self) -> bool:
        return self._listener is not None and not self._stopping.is_set()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                downstream, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(downstream,), daemon=True).start()

    def _serve(self, downstream: socket.socket) -> None:
        try:
            upstream = socket.create_connection((self.target_host, self.target_port),
                                                timeout=self.connect_timeout)
        except OSError:
            # Refused or unreachable: the client sees its connection reset, as it would
            # connecting to the Service itself.
            with contextlib.suppress(OSError):
                downstream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      b"\x01\x00\x00\x00\x00\x00\x00\x00")
            downstream.close()
            return
        upstream.settimeout(None)
        back = threading.Thread(target=self._pump, args=(upstream, downstream), daemon=True)
        back.start()
        self._pump(downstream, upstream)
        back.join()
        for s in (downstream, upstream):
            s.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        """Copy src -> dst until EOF, then half-close dst; a reset is passed on as one."""
        try:
            while True:
                data = src.recv(BUFFER)
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        for t in self._threads:
            t.join(2)
        self._threads.clear()

    def __enter__(self) -> int:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
