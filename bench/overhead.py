"""Proxy overhead: the proxy's CPU time per request (and req/s) under the same wrk load,
for the config Roundhouse renders and what it is measured against. Prints one JSON
object last.

Variants, each run with the proxy pinned to one core (wrk, the origin and the log reader
on the other), access logs written to a pipe that a reader drains, as a container
runtime reads a container's stdout:
  minimal               a hand-written minimal HAProxy config: bind, one server, nothing else
  minimal_logs_headers  the same with `option httplog` to stdout and X-Forwarded-For/-Proto/-Port
  rendered_all          what the pipeline (model -> graph -> render) makes of a LoadBalancer
                        over the same origin, access log accessLog.mode All (the default)
  rendered_sampled      the same, accessLog.mode Sampled (1 in 100, every 5xx)
  rendered_disabled     the same, accessLog.mode Disabled
  nginx                 Debian's nginx, one worker, access log to stdout, the same headers,
                        upstream keep-alive
CPU is the proxy's user + system time (all its processes) during the measured run,
divided by the requests wrk completed. Variants alternate round by round so drift on a
shared machine hits all alike; medians are reported.

The origin is a minimal HAProxy that answers 200 itself, so it is never the bottleneck.

With --callgrind each proxy runs once under valgrind's callgrind instead, and the report
gives instructions per request in user space (counted from after the warm-up to the end
of the load): exact and repeatable on a busy machine, where CPU time varies from run to
run by more than the differences measured; it does not see the kernel's share (socket
I/O, the write of each log line), which is the same for every variant but the log write.

    python bench/overhead.py [--seconds 10] [--connections 20] [--rounds 3] [--callgrind]
Loopback only; wrk, nginx and valgrind come from Debian (installed if missing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from roundhouse.graph import ClusterState, build_loadbalancer_graph
from roundhouse.model import parse_loadbalancer
from roundhouse.model.cluster import parse_endpoint_slice, parse_service
from roundhouse.render.haproxy import RenderOptions, render_haproxy, status_port

TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
# The proxy gets a core of its own; everything else shares the other one.
PROXY_CPU, LOAD_CPU = ("1", "0") if (os.cpu_count() or 1) >= 2 else ("0", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure(tool: str, package: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path:
        return path
    print(f"installing Debian's {package} ...", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                   stdout=subprocess.DEVNULL)
    return shutil.which(tool, path="/usr/bin:/usr/sbin") or sys.exit(f"{tool} is not available")


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


def minimal_config(listen: int, origin: int, logs_headers: bool) -> str:
    extra = f"""    log stdout format raw local0 info
    option httplog
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Port {listen}
""" if logs_headers else ""
    return f"""global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:{listen}
{extra}    default_backend be
backend be
    server s1 127.0.0.1:{origin}
"""


def rendered_config(tmp: Path, listen: int, origin: int, access_log: dict[str, Any]) -> str:
    lb = parse_loadbalancer({
        "metadata": {"name": "bench", "namespace": "default", "uid": "bench"},
        "spec": {"listeners": [{"name": "http", "port": listen, "protocol": "HTTP"}],
                 "backends": [{"service": "origin", "port": "http"}],
                 "limits": {"maxConnections": 4096}, "accessLog": access_log},
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


def nginx_config(tmp: Path, listen: int, origin: int) -> str:
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    log_format rh '$remote_addr:$remote_port $msec $upstream_addr $request_time '
                  '$upstream_connect_time $upstream_response_time $status '
                  '$body_bytes_sent "$request"';
    access_log /dev/stdout rh;
    upstream origin {{ server 127.0.0.1:{origin}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Port $server_port;
        }}
    }}
}}
"""


def cpu_ticks(pid: int) -> int:
    """User + system ticks of pid and its children (HAProxy's master and worker)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0
    for p in pids:
        for task in Path(f"/proc/{p}/task").iterdir():
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


def run_wrk(wrk: str, port: int, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(["taskset", "-c", LOAD_CPU, wrk, "-t2", f"-c{connections}",
                          f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    done = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert done and rps and p99, out
    factor = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": float(done.group(1)), "rps": float(rps.group(1)),
            "p99_ms": float(p99.group(1)) * factor,
            "errors": (float(errors.group(1)) if errors else 0.0)
            + (1.0 if "Socket errors" in out else 0.0)}


def callgrind_pids(config: str) -> list[int]:
    """The callgrind processes running this config file, never another user's."""
    listing = subprocess.run(["callgrind_control"], capture_output=True, text=True,
                             check=False).stdout
    return [int(m.group(1)) for m in re.finditer(r"^PID (\d+): (.*)$", listing, re.M)
            if config in m.group(2)]


def callgrind_instructions(out: Path, pids: list[int]) -> int:
    """Dump the counters of these callgrind processes (by pid: never another user's
    valgrind) and add up the instructions counted since they were last zeroed."""
    total = 0
    for pid in pids:
        subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=False)
        dumps = sorted(out.parent.glob(f"{out.name}.{pid}.*"))
        if dumps:
            found = re.search(r"^(?:summary|totals): (\d+)", dumps[-1].read_text(), re.M)
            total += int(found.group(1)) if found else 0
    return total


def measure(cmd: list[str], listen: int, wrk: str, args: argparse.Namespace) -> dict[str, float]:
    """Start the proxy pinned, its stdout into a drained pipe; warm up, then measure."""
    sink = subprocess.Popen(["taskset", "-c", LOAD_CPU, "cat"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    out = Path(args.tmp) / f"callgrind.{time.monotonic_ns()}"
    if args.callgrind:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *cmd]
    proc = subprocess.Popen(["taskset", "-c", PROXY_CPU, *cmd], stdout=sink.stdin,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        for _ in range(600 if args.callgrind else 100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", listen)) == 0:
                    break
            if proc.poll() is not None:
                sys.exit(f"{cmd[0]} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.05)
        run_wrk(wrk, listen, 2, args.connections)
        if args.callgrind:
            pids = callgrind_pids(cmd[-1] if "-f" in cmd else cmd[cmd.index("-c") + 1])
            for pid in pids:
                subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True,
                               check=False)
        before = cpu_ticks(proc.pid)
        result = run_wrk(wrk, listen, args.seconds, args.connections)
        requests = max(result["requests"], 1.0)
        result["cpu_us_per_request"] = (cpu_ticks(proc.pid) - before) * TICK_US / requests
        if args.callgrind:
            result["instructions_per_request"] = callgrind_instructions(out, pids) / requests
        return result
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        if sink.stdin:
            sink.stdin.close()
        sink.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callgrind", action="store_true",
                        help="count instructions per request under valgrind (one round)")
    parser.add_argument("--haproxy", default="haproxy",
                        help="the HAProxy binary (default: haproxy on PATH, Debian's; "
                             "the manifests' LTS: $(e2e/cluster/fetch-haproxy-lts.sh))")
    args = parser.parse_args()
    if args.callgrind:
        ensure("valgrind", "valgrind")
        args.rounds = 1
    wrk = ensure("wrk", "wrk")
    nginx = ensure("nginx", "nginx-light")
    with tempfile.TemporaryDirectory(prefix="rh-bench-") as tmpdir:
        tmp = Path(tmpdir)
        args.tmp = tmpdir
        origin = free_port()
        (tmp / "origin.cfg").write_text(origin_config(origin))
        origin_proc = subprocess.Popen(["taskset", "-c", LOAD_CPU, args.haproxy, "-db", "-f",
                                        str(tmp / "origin.cfg")], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)

        def haproxy(text: Callable[[int], str]) -> Callable[[int, str], list[str]]:
            def command(listen: int, name: str) -> list[str]:
                # Without -W: the worker alone serves requests, so it runs as the only
                # process (under valgrind a master re-executes itself out of it, and its
                # forked worker cannot be reached by callgrind_control).
                (tmp / f"{name}.cfg").write_text(text(listen))
                return [args.haproxy, "-db", "-f", str(tmp / f"{name}.cfg")]
            return command

        def nginx_command(listen: int, name: str) -> list[str]:
            (tmp / "nginx.conf").write_text(nginx_config(tmp, listen, origin))
            return [nginx, "-c", str(tmp / "nginx.conf"), "-e", "stderr"]

        variants: dict[str, Callable[[int, str], list[str]]] = {
            "minimal": haproxy(lambda p: minimal_config(p, origin, False)),
            "minimal_logs_headers": haproxy(lambda p: minimal_config(p, origin, True)),
            "rendered_all": haproxy(lambda p: rendered_config(tmp, p, origin, {})),
            "rendered_sampled": haproxy(lambda p: rendered_config(
                tmp, p, origin, {"mode": "Sampled"})),
            "rendered_disabled": haproxy(lambda p: rendered_config(
                tmp, p, origin, {"mode": "Disabled"})),
            "nginx": nginx_command,
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        try:
            time.sleep(0.3)
            for round_ in range(args.rounds):
                for name, command in variants.items():
                    listen = free_port()
                    result = measure(command(listen, name), listen, wrk, args)
                    runs[name].append(result)
                    print(f"round {round_ + 1} {name}: {result['cpu_us_per_request']:.2f} "
                          f"us/request, {result['rps']:.0f} req/s", file=sys.stderr)
        finally:
            os.killpg(origin_proc.pid, signal.SIGTERM)
            origin_proc.wait(10)

    def median(name: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[name]), 2)

    report: dict[str, Any] = {
        "benchmark": "overhead",
        "haproxy": subprocess.run([args.haproxy, "-v"], capture_output=True, text=True,
                                  check=False).stdout.split(" - ")[0].strip(),
        "load": {"tool": "wrk", "threads": 2, "connections": args.connections,
                 "seconds_per_run": args.seconds, "rounds": args.rounds,
                 "proxy_cpu": PROXY_CPU, "load_cpu": LOAD_CPU},
        "variants": {name: {"cpu_us_per_request": median(name, "cpu_us_per_request"),
                            "rps": median(name, "rps"), "p99_ms": median(name, "p99_ms")}
                     for name in variants},
        "errors": sum(r["errors"] for rs in runs.values() for r in rs),
    }
    key = "instructions_per_request" if args.callgrind else "cpu_us_per_request"
    if args.callgrind:
        report["load"]["tool"] = "wrk under callgrind"
        for name, v in report["variants"].items():
            v["instructions_per_request"] = round(median(name, key))
    cpu = {name: v[key] for name, v in report["variants"].items()}
    report["ratios_" + key] = {
        f"{name}/{base}": round(cpu[name] / cpu[base], 3)
        for name in ("rendered_all", "rendered_sampled", "rendered_disabled")
        for base in ("minimal", "minimal_logs_headers", "nginx")
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
