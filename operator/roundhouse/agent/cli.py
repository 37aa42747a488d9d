"""`roundhouse agent`: the sidecar that applies our ConfigMap to the HAProxy beside it.

Wired into the main CLI with `add_agent_parser(subparsers)`; runs via `run_agent(args)`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from roundhouse.agent.agent import Agent
from roundhouse.agent.loop import run
from roundhouse.agent.source import KubernetesAPI, Source, SourceError
from roundhouse.model.pod import AGENT_METRICS_PORT

log = logging.getLogger("roundhouse.agent")

DEFAULT_RUNTIME_DIR = "/var/run/roundhouse"
DEFAULT_METRICS_PORT = AGENT_METRICS_PORT  # the Deployment's containerPort


def add_agent_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `agent` subcommand to the main parser's subparsers (sets func=run_agent)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "agent", help="run the per-proxy agent beside HAProxy",
        description="Watch the proxy's ConfigMap and apply it to the HAProxy beside it: "
                    "endpoint changes through the Runtime API, structural ones by a "
                    "validated, hitless reload.")
    p.add_argument("--configmap", required=True, help="ConfigMap with haproxy.cfg and "
                   "servers.json")
    p.add_argument("--status-configmap", help="ConfigMap to report this pod's status into")
    p.add_argument("--runtime-dir", default=DEFAULT_RUNTIME_DIR,
                   help="shared with HAProxy: config, sockets, certs (default %(default)s)")
    p.add_argument("--namespace", default=None, help="default: $POD_NAMESPACE")
    p.add_argument("--pod-name", default=None, help="default: $POD_NAME, else the host name")
    p.add_argument("--haproxy-bin", default="haproxy",
                   help="used for `haproxy -c`; when absent the reload result is the check")
    p.add_argument("--once", action="store_true",
                   help="fetch, write config and certificates, exit (the init container)")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                   help="Prometheus metrics port, 0 disables (default %(default)s)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config)")
    p.add_argument("--resync-seconds", type=float, default=300.0,
                   help="re-read the ConfigMap and Secrets this often (default %(default)s)")
    p.add_argument("--once-timeout", type=float, default=120.0,
                   help="--once: how long to wait for the ConfigMap and Secrets")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=run_agent)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roundhouse")
    add_agent_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def run_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    namespace = args.namespace or os.environ.get("POD_NAMESPACE")
    pod = args.pod_name or os.environ.get("POD_NAME") or socket.gethostname()
    if not namespace:
        log.error("no namespace: pass --namespace or set POD_NAMESPACE")
        return 2
    api = KubernetesAPI(args.kubeconfig)
    try:
        return _run_with(api, args, namespace, pod)
    finally:
        api.close()


def _run_with(api: KubernetesAPI, args: argparse.Namespace, namespace: str, pod: str) -> int:
    source = Source(api, namespace, args.configmap, args.status_configmap, pod,
                    resync_seconds=args.resync_seconds)
    agent = Agent(args.runtime_dir, haproxy_bin=args.haproxy_bin or None)
    if args.once:
        return run_once(agent, source, args.once_timeout)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.metrics.serve(args.metrics_port)
    log.info("agent for ConfigMap %s/%s (pod %s), runtime dir %s", namespace, args.configmap,
             pod, args.runtime_dir)
    run(agent, source, stop)
    return 0


def run_once(agent: Agent, source: Source, timeout: float) -> int:
    """Init container: write what HAProxy starts with. Waits for the ConfigMap and Secrets."""
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        try:
            desired = source.fetch()
            break
        except SourceError as err:
            problem = str(err)
        except Exception as err:  # API server not reachable yet
            problem = f"{type(err).__name__}: {err}"
        if time.monotonic() + delay > deadline:
            log.error("giving up after %.0fs: %s", timeout, problem)
            agent.error = problem
            source.report(agent.status())
            return 1
        log.info("waiting for the desired configuration: %s", problem)
        time.sleep(delay)
        delay = min(delay * 2, 10.0)
    result = agent.install(desired)
    source.report(agent.status())
    return 0 if result.action != "rejected" else 1
