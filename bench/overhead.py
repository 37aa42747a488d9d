"""Proxy overhead: requests/s and p99 latency through Roundhouse's HAProxy vs straight to
the backend, with the same load generator (wrk) in the same run. Prints one JSON object last.

The backend is a minimal HAProxy that answers 200 itself, so the origin is never the
bottleneck and the ratio measures the proxy hop. The proxy runs the config the real
pipeline renders (model -> graph -> render) for a LoadBalancer over that backend.

    python bench/overhead.py [--seconds 10] [--connections 20] [--rounds 3]
Loopback only; wrk comes from Debian (installed if missing).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from roundhouse.graph import ClusterState, build_loadbalancer_graph
from roundhouse.model import parse_loadbalancer
from roundhouse.model.cluster import parse_endpoint_slice, parse_service
from roundhouse.render.haproxy import RenderOptions, render_haproxy, status_port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    print("installing Debian's wrk ...", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True,
                   stdout=subprocess.DEVNULL)
    return shutil.which("wrk") or sys.exit("wrk is not available")


def origin_config(port: int) -> str:
    return f"""global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend origin
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string ok
"""


def proxy_config(tmp: Path, listen: int, origin: int) -> str:
    lb = parse_loadbalancer({
        "metadata": {"name": "bench", "namespace": "default", "uid": "bench"},
        "spec": {"listeners": [{"name": "http", "port": listen, "protocol": "HTTP"}],
                 "backends": [{"service": "origin", "port": "http"}],
                 "limits": {"maxConnections": 4096}},
    })
    cluster = ClusterState(
        {"origin": parse_service({"metadata": {"name": "origin"},
                                  "spec": {"ports": [{"name": "http", "port": 80}]}})},
        [s for s in [parse_endpoint_slice({
            "metadata": {"name": "origin-1",
                         "labels": {"kubernetes.io/service-name": "origin"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": origin}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True},
                           "targetRef": {"name": "origin-0"}}]})] if s])
    graph = build_loadbalancer_graph(lb, cluster)
    config = render_haproxy(graph, RenderOptions(runtime_dir=str(tmp), cert_dir=str(tmp),
                                                 bind_address="127.0.0.1")).config
    # The status frontend's fixed port may be taken on a shared machine.
    return config.replace(f"127.0.0.1:{status_port(graph)}", f"127.0.0.1:{free_port()}")


def start_haproxy(cfg: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    time.sleep(0.5)
    if proc.poll() is not None:
        sys.exit(f"haproxy failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return proc


def run_wrk(wrk: str, url: str, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run([wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99, out
    factor = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p99_ms": float(p99.group(1)) * factor,
            "non_2xx": float(errors.group(1)) if errors else 0.0,
            "socket_errors": 1.0 if socket_errors else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    wrk = ensure_wrk()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="rh-bench-") as tmpdir:
        tmp = Path(tmpdir)
        origin, listen = free_port(), free_port()
        (tmp / "origin.cfg").write_text(origin_config(origin))
        (tmp / "proxy.cfg").write_text(proxy_config(tmp, listen, origin))
        try:
            procs.append(start_haproxy(tmp / "origin.cfg"))
            procs.append(start_haproxy(tmp / "proxy.cfg"))
            runs: dict[str, list[dict[str, float]]] = {"direct": [], "proxy": []}
            for round_ in range(args.rounds):  # alternate, so drift hits both alike
                for name, port in (("direct", origin), ("proxy", listen)):
                    result = run_wrk(wrk, f"http://127.0.0.1:{port}/", args.seconds,
                                     args.connections)
                    runs[name].append(result)
                    print(f"round {round_ + 1} {name}: {result['rps']:.0f} req/s, "
                          f"p99 {result['p99_ms']:.2f} ms", file=sys.stderr)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    report: dict[str, Any] = {
        "benchmark": "overhead",
        "load": {"tool": "wrk", "threads": 2, "connections": args.connections,
                 "seconds_per_run": args.seconds, "rounds": args.rounds},
        "direct": {"rps": median("direct", "rps"), "p99_ms": median("direct", "p99_ms")},
        "through_haproxy": {"rps": median("proxy", "rps"), "p99_ms": median("proxy", "p99_ms")},
        "errors": sum(r["non_2xx"] + r["socket_errors"] for rs in runs.values() for r in rs),
    }
    report["rps_ratio_proxy_over_direct"] = round(
        report["through_haproxy"]["rps"] / report["direct"]["rps"], 3)
    report["p99_ratio_proxy_over_direct"] = round(
        report["through_haproxy"]["p99_ms"] / report["direct"]["p99_ms"], 3)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
