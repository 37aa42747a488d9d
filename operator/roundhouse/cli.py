"""`roundhouse` command line: run (the operator), render (offline), agent, demo."""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from roundhouse import kubeyaml
from roundhouse.graph import ClusterState, ProxyGraph, issued_secret_name
from roundhouse.graph.gateway import build_gateway_graph, gateway_cluster_state
from roundhouse.graph.names import issued_dns_names
from roundhouse.model import FieldError, SpecError, parse_loadbalancer, parse_reverseproxy
from roundhouse.model.cluster import (
    EndpointSlice,
    TLSSecret,
    parse_endpoint_slice,
    parse_service,
    parse_tls_secret,
)
from roundhouse.model.common import size_errors
from roundhouse.model.gatewayapi import (
    Gateway,
    HTTPRoute,
    parse_gateway,
    parse_httproute,
    parse_reference_grant,
)
from roundhouse.model.loadbalancer import LoadBalancer
from roundhouse.model.reverseproxy import ReverseProxy
from roundhouse.pipeline import (
    Desired,
    desired_for_gateway,
    desired_for_loadbalancer,
    desired_for_reverseproxy,
)
from roundhouse.render.guard import forbidden_lines
from roundhouse.render.haproxy import RenderOptions


def _load_documents(paths: Sequence[str]) -> list[dict[str, Any]]:
    """The objects in the files, read as kubectl reads them. Raises YAMLInputError."""
    docs: list[dict[str, Any]] = []
    for path in paths:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        try:
            loaded = kubeyaml.load_all(text)
        except kubeyaml.YAMLInputError as err:
            raise kubeyaml.YAMLInputError(f"{path}: {err}") from err
        for doc in loaded:
            if isinstance(doc, dict) and isinstance(doc.get("kind"), str):
                docs.append(doc)
    return docs


def _cluster_state(docs: list[dict[str, Any]], namespace: str) -> ClusterState:
    def in_namespace(d: dict[str, Any]) -> bool:
        meta = d.get("metadata")
        return isinstance(meta, dict) and meta.get("namespace", namespace) == namespace

    services = {s.name: s for s in (parse_service(d) for d in docs
                                    if d["kind"] == "Service" and in_namespace(d))}
    slices = [s for s in (parse_endpoint_slice(d) for d in docs
                          if d["kind"] == "EndpointSlice" and in_namespace(d)) if s]
    secrets = {s.name: s for s in (parse_tls_secret(d) for d in docs
                                   if d["kind"] == "Secret" and in_namespace(d))}
    return ClusterState(services, slices, secrets)


RESOURCE_KINDS = ("LoadBalancer", "ReverseProxy", "Gateway")


def _gateway_cluster_state(docs: list[dict[str, Any]], gw: Gateway,
                           routes: list[HTTPRoute]) -> ClusterState:
    """graph.gateway_cluster_state from the documents: the operator's keys, offline."""
    def key(d: dict[str, Any]) -> tuple[str, str]:
        meta = d.get("metadata") or {}
        return str(meta.get("namespace") or gw.namespace), str(meta.get("name"))

    services = {key(d): parse_service(d) for d in docs if d["kind"] == "Service"}
    secrets = {key(d): parse_tls_secret(d) for d in docs if d["kind"] == "Secret"}
    slices: dict[tuple[str, str], list[EndpointSlice]] = {}
    for d in docs:
        if d["kind"] == "EndpointSlice" and (s := parse_endpoint_slice(d)):
            slices.setdefault((key(d)[0], s.service), []).append(s)
    state, _ = gateway_cluster_state(
        gw, routes, lambda ns, name: services.get((ns, name)),
        lambda ns, name: slices.get((ns, name), []),
        lambda ns, name: secrets.get((ns, name)), {})
    return state


def _gateway_desired(doc: dict[str, Any], docs: list[dict[str, Any]],
                     options: RenderOptions | None, namespace: str) -> Desired:
    """A Gateway with the HTTPRoutes and ReferenceGrants among the documents; the route
    statuses it would get are printed as warnings when not Accepted or not resolved."""
    def with_ns(d: dict[str, Any]) -> dict[str, Any]:
        meta = d.get("metadata") or {}
        return {**d, "metadata": {**meta, "namespace": meta.get("namespace") or namespace}}

    gw = parse_gateway(doc)
    routes = [parse_httproute(with_ns(d)) for d in docs if d["kind"] == "HTTPRoute"]
    grants = [parse_reference_grant(with_ns(d)) for d in docs if d["kind"] == "ReferenceGrant"]
    build = build_gateway_graph(gw, routes, grants, _gateway_cluster_state(docs, gw, routes))
    for li in build.listeners:
        for c in li.conditions:
            if (not c.status and c.type != "Conflicted") or (c.status and c.type == "Conflicted"):
                print(f"warning: {gw.name}: listener {li.name}: {c.type}={c.status} "
                      f"{c.reason}: {c.message}", file=sys.stderr)
    for (route_ns, route_name), parents in sorted(build.routes.items()):
        for parent in parents:
            for c in parent.conditions:
                if not c.status:
                    print(f"warning: {gw.name}: HTTPRoute {route_ns}/{route_name}: "
                          f"{c.type}=False {c.reason}: {c.message}", file=sys.stderr)
    return desired_for_gateway(build.graph, gw, options=options)


def _desired(doc: dict[str, Any], docs: list[dict[str, Any]],
             options: RenderOptions | None) -> Desired:
    """One resource document through the pure pipeline; raises SpecError."""
    kind = doc["kind"]
    if kind == "Gateway":
        meta = doc.get("metadata") or {}
        return _gateway_desired(doc, docs, options, str(meta.get("namespace") or "default"))
    model: LoadBalancer | ReverseProxy = (
        parse_loadbalancer(doc) if kind == "LoadBalancer" else parse_reverseproxy(doc))
    cluster = _cluster_state(docs, model.namespace)
    issued = issued_secret_name(kind, model.name)
    if issued_dns_names(model) and issued not in cluster.secrets:
        # Offline there is no operator to issue it: render as if it had.
        cluster = ClusterState(cluster.services, cluster.slices,
                               {**cluster.secrets, issued: TLSSecret(issued, True, True,
                                                                     "issued-at-runtime")})
    if isinstance(model, LoadBalancer):
        return desired_for_loadbalancer(model, cluster, options=options)
    return desired_for_reverseproxy(model, cluster, options=options)


def cmd_render(args: argparse.Namespace) -> int:
    try:
        own = _load_documents([args.file])  # read once: it may be stdin
        docs = own + _load_documents(args.services)
    except kubeyaml.YAMLInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    resources = [d for d in own if d["kind"] in RESOURCE_KINDS]
    if not resources:
        print(f"error: no LoadBalancer, ReverseProxy or Gateway found in {args.file}",
              file=sys.stderr)
        return 2
    out: list[dict[str, Any]] = []
    status = 0
    for doc in resources:
        meta = doc.setdefault("metadata", {})
        if isinstance(meta, dict):  # else the parser names metadata
            meta.setdefault("namespace", args.namespace)
            meta.setdefault("uid", "00000000-0000-0000-0000-000000000000")
        name = meta.get("name", "?") if isinstance(meta, dict) else "?"
        try:
            refused = size_errors(doc)
            if "apiVersion" not in doc:
                refused.append(FieldError("apiVersion", "Required value"))
            if doc["kind"] == "Gateway" and not str(doc.get("apiVersion")).startswith(
                    "gateway.networking.k8s.io/"):
                refused.append(FieldError("apiVersion", "a Gateway is gateway.networking.k8s.io"))
            if refused:
                raise SpecError(refused)
            desired = _desired(doc, docs, RenderOptions(cert_dir=args.cert_dir)
                               if args.cert_dir else None)
        except SpecError as err:
            print(f"error: {doc['kind']} {name!r} is invalid:", file=sys.stderr)
            for e in err.errors:
                print(f"  {e}", file=sys.stderr)
            status = 2
            continue
        for p in desired.graph.problems:
            print(f"warning: {name}: {p.condition}=False {p.reason}: {p.message}",
                  file=sys.stderr)
        if args.check and not _haproxy_check(desired.rendered.config, desired.graph):
            status = 1
        if args.haproxy_cfg:
            sys.stdout.write(desired.rendered.config)
            continue
        out.extend(desired.children)
    if not args.haproxy_cfg:
        yaml.safe_dump_all(out, sys.stdout, sort_keys=False, width=1000)
    return status


def _haproxy_check(config: str, graph: ProxyGraph) -> bool:
    """Run the real `haproxy -c` on the rendered config, with throwaway certificates.

    The input is untrusted: the config must hold no directive that loads or runs code
    (render.guard), and the check runs in an empty directory with an empty environment,
    no stdin, a time limit, and no network when the system can give it a network
    namespace of its own (so a server name cannot even be resolved)."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        print("error: --check needs the haproxy binary on PATH", file=sys.stderr)
        return False
    forbidden = forbidden_lines(config)
    if forbidden:
        print("error: the rendered config holds directives that load or run code; not "
              "checked:\n  " + "\n  ".join(forbidden), file=sys.stderr)
        return False
    from roundhouse.placeholder_certificates import write_placeholder_certificates

    with tempfile.TemporaryDirectory() as tmp:
        write_placeholder_certificates(
            Path(tmp), [c.file for c in graph.certificates if c.kind == "pair"],
            [c.file for c in graph.certificates if c.kind == "ca"])
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(config.replace("crt-base /var/run/roundhouse/certs", f"crt-base {tmp}")
                       .replace("ca-base /var/run/roundhouse/certs", f"ca-base {tmp}"))
        try:
            result = subprocess.run([*_no_network(), haproxy, "-c", "-f", str(cfg)],
                                    capture_output=True, text=True, check=False, cwd=tmp,
                                    env={}, stdin=subprocess.DEVNULL, timeout=60)
        except subprocess.TimeoutExpired:
            print("error: haproxy -c did not finish within 60s", file=sys.stderr)
            return False
    if result.returncode != 0:
        print(f"error: haproxy -c rejected the config:\n{result.stdout}{result.stderr}",
              file=sys.stderr)
        return False
    print(f"haproxy -c: {graph.kind} {graph.name}: configuration is valid", file=sys.stderr)
    return True


@functools.cache
def _no_network() -> tuple[str, ...]:
    """`unshare` into a new network namespace (with only a down loopback) when the
    system allows it, for root or through a user namespace; else nothing."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for prefix in ((unshare, "--net"), (unshare, "--net", "--map-root-user")):
        probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return prefix
    return ()


def cmd_run(args: argparse.Namespace) -> int:
    # The operator uses kubernetes_asyncio only. kopf imports the synchronous `kubernetes`
    # package wherever it is installed (a test environment, a shared virtualenv) to
    # recognise its models, which costs about 20 MB of the operator's memory for nothing;
    # the image does not have it. Not imported here, as in the image.
    if "kubernetes" not in sys.modules:
        sys.modules["kubernetes"] = None  # type: ignore[assignment]
    if args.gateway_api:
        # Read when the handlers are imported (roundhouse.main), so set it first. An
        # ROUNDHOUSE_GATEWAY_API already in the environment is left as it is.
        os.environ["ROUNDHOUSE_GATEWAY_API"] = "1"
    from roundhouse.main import run_operator

    return run_operator(
        namespaces=args.namespace,
        liveness=args.liveness,
        leader_election_namespace=args.leader_election_namespace,
        metrics_port=args.metrics_port,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roundhouse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    render = sub.add_parser("render", help="render a LoadBalancer's or ReverseProxy's children "
                            "offline, as YAML")
    render.add_argument("-f", "--file", required=True,
                        help="YAML with LoadBalancer(s) and/or ReverseProxy(ies); - = stdin")
    render.add_argument("--services", action="append", default=[], metavar="FILE",
                        help="YAML with Services, EndpointSlices, Secrets to resolve backends")
    render.add_argument("-n", "--namespace", default="default")
    render.add_argument("--haproxy-cfg", action="store_true", help="print only haproxy.cfg")
    render.add_argument("--check", action="store_true", help="validate with the real haproxy -c")
    render.add_argument("--cert-dir", help="crt-base to render (default /var/run/roundhouse/certs)")
    render.set_defaults(func=cmd_render)

    run = sub.add_parser("run", help="run the operator (kopf) against the current cluster")
    run.add_argument("-n", "--namespace", action="append", default=[],
                     help="watch only these namespaces (default: all)")
    run.add_argument("--liveness", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz "
                     "(answered by standbys too)")
    run.add_argument("--leader-election-namespace",
                     help="run as one of several replicas: only the Lease holder reconciles")
    run.add_argument("--metrics-port", type=int, default=9100,
                     help="Prometheus /metrics port, served from the start (standbys too); "
                          "0 disables (default %(default)s)")
    run.add_argument("--gateway-api", action="store_true",
                     help="also reconcile Gateway API GatewayClasses, Gateways and HTTPRoutes "
                          "(gateway.networking.k8s.io/v1) of the controller "
                          "roundhouse.dev/gateway-controller; the CRDs must be installed "
                          "(same as ROUNDHOUSE_GATEWAY_API=1)")
    run.set_defaults(func=cmd_run)

    from roundhouse.agent.cli import add_agent_parser

    add_agent_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
