"""A Gateway, its attached HTTPRoutes and the cluster -> ProxyGraph, plus the status the
spec asks for (Gateway listeners, each route's parent entry). Pure: no I/O.

The third input kind of the same pipeline: a Gateway compiles into the frontends,
virtual hosts, route rules and pools a ReverseProxy compiles into, and renders through
the same renderer. What differs is attachment and precedence, as Gateway API defines them:

- Listeners. One HAProxy frontend per port; listeners sharing a port must share its
  protocol (else both are Conflicted). HTTP and HTTPS (TLS mode Terminate) are
  supported; any other protocol is not Accepted (UnsupportedProtocol).
- Attachment. A route's parentRef attaches it to the Gateway's listeners that its
  sectionName and port select, that allow the route's namespace and kind, and whose
  hostname intersects the route's hostnames.
- Hosts. For each listener (most specific hostname first), its effective hostnames
  (listener hostname and route hostnames intersected), most specific first. A request
  is served by the first listener whose hostname matches, then by the first matching
  rule of its most specific matching hostname and then of the less specific ones (a
  wildcard's rules, then the catch-all's): the rules of one listener never serve
  another's hostname.
- Rules, within a hostname: Exact path, then the longest PathPrefix, then regular
  expressions; then a method, more header matches, more query matches; then the older
  route, then namespace/name, then rule and match order.
- A rule whose backendRefs are all invalid or absent answers 500 (the spec's words);
  invalid ones among valid ones are left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from roundhouse.graph.endpoints import WeightedEndpoint, assign_slots, resolve_backends
from roundhouse.graph.routes import DEFAULT_PORTS, PATH_RANK, normalized_prefix
from roundhouse.graph.secrets import pair_certificate
from roundhouse.graph.types import (
    Certificate,
    ClusterState,
    Frontend,
    PathRewrite,
    Pool,
    Problem,
    ProxyGraph,
    RedirectRule,
    RouteRule,
    Routing,
    Server,
    VirtualHost,
)
from roundhouse.model import gatewayapi as g
from roundhouse.model.cluster import EndpointSlice, Service, TLSSecret
from roundhouse.model.common import AccessLog, Backend, Limits, Timeouts
from roundhouse.model.reverseproxy import HeaderChanges, HeaderMatch

SUPPORTED_PROTOCOLS = ("HTTP", "HTTPS")
SUPPORTED_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect",
                     "URLRewrite")
_PATH_TYPES = {"Exact": "Exact", "PathPrefix": "Prefix", "RegularExpression": "RegularExpression"}
NO_BACKENDS_STATUS = 500


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""


@dataclass
class ListenerResult:
    name: str
    supported_kinds: tuple[tuple[str, str], ...]
    conditions: list[Condition] = field(default_factory=list)
    attached_routes: int = 0

    @property
    def valid(self) -> bool:
        """Accepted, not conflicted: routes may attach (and are served if programmed)."""
        return all(c.status for c in self.conditions if c.type == g.ACCEPTED) and not any(
            c.status for c in self.conditions if c.type == g.CONFLICTED)

    @property
    def served(self) -> bool:
        return self.valid and all(c.status for c in self.conditions if c.type == g.PROGRAMMED)


@dataclass(frozen=True)
class ParentResult:
    parent: g.ParentRef
    conditions: tuple[Condition, ...]


@dataclass
class GatewayBuild:
    graph: ProxyGraph
    listeners: list[ListenerResult]
    conditions: list[Condition]
    # (route namespace, route name) -> one entry per parentRef that names this Gateway
    routes: dict[tuple[str, str], list[ParentResult]]


# ------------------------------------------------------------------------- hostnames


def hostname_matches(pattern: str | None, host: str) -> bool:
    """Does `pattern` (None: any; "*.a.b": one or more labels in front of a.b) match `host`
    (an exact name, or a wildcard taken as the set of names it matches)?"""
    if not pattern:
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host != pattern[2:]
    return host == pattern


def intersect(listener: str | None, route: str) -> str | None:
    """The hostnames a listener and a route hostname both match, as one pattern."""
    if listener is None:
        return route
    if hostname_matches(listener, route):
        return route
    if route.startswith("*.") and hostname_matches(route, listener):
        return listener
    return None


def effective_hostnames(listener: str | None, route: tuple[str, ...]) -> list[str]:
    """"" stands for every hostname (no listener hostname, no route hostnames)."""
    if not route:
        return [listener or ""]
    out = [h for r in route if (h := intersect(listener, r)) is not None]
    return list(dict.fromkeys(out))


def specificity(hostname: str) -> tuple[int, int, str]:
    """Sort key: exact names, then wildcards by longest suffix, then the catch-all."""
    if not hostname:
        return (2, 0, "")
    return (1 if hostname.startswith("*.") else 0, -len(hostname), hostname)


def covers(general: str, specific: str) -> bool:
    """Every host `specific` matches, `general` matches too."""
    return not general or general == specific or (
        general.startswith("*.") and hostname_matches(general, specific))


# ------------------------------------------------------------------------- listeners


def _namespace_allowed(allowed: g.AllowedRoutes, gateway_ns: str, route_ns: str,
                       namespace_labels: Mapping[str, Mapping[str, str]]) -> bool:
    if allowed.namespaces_from == "All":
        return True
    if allowed.namespaces_from == "Same":
        return route_ns == gateway_ns
    return selector_matches(allowed.selector or {}, namespace_labels.get(route_ns) or {})


def selector_matches(selector: Mapping[str, object], labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector against a namespace's labels."""
    for key, value in dict(selector.get("matchLabels") or {}).items():  # type: ignore[call-overload]
        if labels.get(key) != value:
            return False
    for expr in list(selector.get("matchExpressions") or []):  # type: ignore[call-overload]
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _listener_results(gw: g.Gateway, grants: list[g.ReferenceGrant], cluster: ClusterState,
                      problems: list[Problem]
                      ) -> tuple[list[ListenerResult], dict[str, list[Certificate]]]:
    """Each listener's conditions and, for HTTPS ones, its usable certificates."""
    results: list[ListenerResult] = []
    certificates: dict[str, list[Certificate]] = {}
    protocols: dict[int, set[str]] = {}
    for li in gw.listeners:
        protocols.setdefault(li.port, set()).add(li.protocol)
    seen_hosts: dict[tuple[int, str], int] = {}
    for li in gw.listeners:
        key = (li.port, li.hostname or "")
        seen_hosts[key] = seen_hosts.get(key, 0) + 1
    for i, li in enumerate(gw.listeners):
        where = f"spec.listeners[{i}]"
        if li.protocol not in SUPPORTED_PROTOCOLS:
            results.append(ListenerResult(li.name, (), [
                Condition(g.ACCEPTED, False, g.REASON_UNSUPPORTED_PROTOCOL,
                          f"protocol {li.protocol!r} is not supported (HTTP, HTTPS are)"),
                Condition(g.PROGRAMMED, False, g.REASON_INVALID,
                          f"protocol {li.protocol!r} is not supported"),
                Condition(g.RESOLVED_REFS, True, g.REASON_RESOLVED_REFS),
                Condition(g.CONFLICTED, False, g.REASON_NO_CONFLICTS)]))
            continue
        kinds = li.allowed_routes.kinds or (g.HTTP_ROUTE_KIND,)
        supported = tuple(k for k in kinds if k == g.HTTP_ROUTE_KIND)
        resolved = Condition(g.RESOLVED_REFS, True, g.REASON_RESOLVED_REFS)
        if len(supported) != len(kinds):
            bad = ", ".join(f"{grp or 'core'}/{k}" for grp, k in kinds if (grp, k) not in
                            supported)
            resolved = Condition(g.RESOLVED_REFS, False, g.REASON_INVALID_ROUTE_KINDS,
                                 f"route kinds not supported: {bad} (HTTPRoute is)")
        if li.protocol == "HTTPS":
            resolved, certs = _listener_certificates(gw, i, li, grants, cluster, problems,
                                                     resolved)
            certificates[li.name] = certs
        conflicted = Condition(g.CONFLICTED, False, g.REASON_NO_CONFLICTS)
        if len(protocols[li.port]) > 1:
            conflicted = Condition(g.CONFLICTED, True, g.REASON_PROTOCOL_CONFLICT,
                                   f"port {li.port} is used by listeners of protocols "
                                   + ", ".join(sorted(protocols[li.port])))
        elif seen_hosts[(li.port, li.hostname or "")] > 1:
            conflicted = Condition(g.CONFLICTED, True, g.REASON_HOSTNAME_CONFLICT,
                                   f"another listener on port {li.port} has the same hostname")
        # Unsupported kinds beside a supported one leave the listener serving HTTPRoutes.
        refs_ok = resolved.status or (resolved.reason == g.REASON_INVALID_ROUTE_KINDS
                                      and bool(supported))
        ok = refs_ok and not conflicted.status
        programmed = Condition(g.PROGRAMMED, ok, g.REASON_PROGRAMMED if ok else g.REASON_INVALID,
                               "" if ok else conflicted.message or resolved.message)
        accepted = Condition(g.ACCEPTED, not conflicted.status,
                             g.REASON_ACCEPTED if not conflicted.status else
                             conflicted.reason, conflicted.message)
        results.append(ListenerResult(li.name, supported,
                                      [accepted, programmed, resolved, conflicted]))
        if not ok:
            problems.append(Problem("Accepted", resolved.reason if not resolved.status
                                    else conflicted.reason,
                                    f"{where} ({li.name}): {programmed.message}"))
    return results, certificates


def _listener_certificates(gw: g.Gateway, index: int, li: g.GatewayListener,
                           grants: list[g.ReferenceGrant], cluster: ClusterState,
                           problems: list[Problem], resolved: Condition
                           ) -> tuple[Condition, list[Certificate]]:
    where = f"spec.listeners[{index}].tls"
    if li.tls_mode != "Terminate":
        return Condition(g.RESOLVED_REFS, False, g.REASON_INVALID_CERTIFICATE_REF,
                         f"{where}.mode {li.tls_mode!r} is not supported on HTTPS"), []
    if not li.certificate_refs:
        return Condition(g.RESOLVED_REFS, False, g.REASON_INVALID_CERTIFICATE_REF,
                         f"{where}.certificateRefs: none given"), []
    certs: list[Certificate] = []
    failure: Condition | None = None
    for j, ref in enumerate(li.certificate_refs):
        at = f"{where}.certificateRefs[{j}]"
        if ref.group != "" or ref.kind != "Secret":
            failure = failure or Condition(g.RESOLVED_REFS, False,
                                           g.REASON_INVALID_CERTIFICATE_REF,
                                           f"{at}: {ref.group or 'core'}/{ref.kind} is not a "
                                           "Secret")
            continue
        if not g.permitted(grants, g.GROUP, "Gateway", gw.namespace, ref):
            failure = failure or Condition(g.RESOLVED_REFS, False, g.REASON_REF_NOT_PERMITTED,
                                           f"{at}: Secret {ref.namespace}/{ref.name} is in "
                                           "another namespace and no ReferenceGrant there "
                                           "allows it")
            continue
        local: list[Problem] = []
        cert = pair_certificate(secret_key(gw, ref.namespace, ref.name), False, at,
                                ref.namespace, cluster, local)
        if cert is None:
            problems.extend(local)
            failure = failure or Condition(g.RESOLVED_REFS, False,
                                           g.REASON_INVALID_CERTIFICATE_REF,
                                           local[0].message if local else at)
            continue
        certs.append(cert)
    if failure is not None:
        return failure, certs
    return resolved, certs


def secret_key(gw: g.Gateway, namespace: str, name: str) -> str:
    """The key of a Secret in ClusterState.secrets: its name in the Gateway's namespace
    (where the agent reads it), else the name of the Gateway's copy there."""
    return name if namespace == gw.namespace else mirrored_secret_name(gw.name, namespace, name)


MIRRORED_SECRET_PREFIX = "rh-gw-cert-"


def mirrored_secret_name(gateway: str, namespace: str, name: str) -> str:
    """A Gateway's copy, in its namespace, of a certificate Secret a ReferenceGrant lets
    it use from another namespace (the agent reads Secrets of its own namespace only).
    One copy per Gateway: each owns (and deletes) its own, however many share a source."""
    digest = hashlib.sha256(f"{gateway}:{namespace}/{name}".encode()).hexdigest()[:10]
    return f"{MIRRORED_SECRET_PREFIX}{digest}"


def service_key(namespace: str, name: str) -> str:
    """The key of a Service in the ClusterState a Gateway is built from."""
    return f"{namespace}/{name}"


def gateway_cluster_state(
        gw: g.Gateway, routes: list[g.HTTPRoute],
        service: Callable[[str, str], Service | None],
        slices: Callable[[str, str], Iterable[EndpointSlice]],
        secret: Callable[[str, str], TLSSecret | None],
        previous_slots: Mapping[str, Mapping[str, str]],
) -> tuple[ClusterState, set[tuple[str, str, str]]]:
    """The ClusterState a Gateway is built from, by (namespace, name) lookups: the
    Services its routes name (keyed service_key, in every namespace), their
    EndpointSlices, the listeners' certificate Secrets (keyed secret_key); and the
    (kind, namespace, name) of what it read, whose changes re-reconcile it. The operator
    looks up its indexes, `roundhouse render` the documents it was given."""
    reads: set[tuple[str, str, str]] = set()
    services: dict[str, Service] = {}
    found_slices: list[EndpointSlice] = []
    for route in routes:
        for rule in route.rules:
            for ref in rule.backend_refs:
                if ref.group != "" or ref.kind != "Service":
                    continue
                reads.add(("Service", ref.namespace, ref.name))
                key = service_key(ref.namespace, ref.name)
                found = service(ref.namespace, ref.name)
                if found is None or key in services:
                    continue
                services[key] = found
                found_slices.extend(dataclasses.replace(s, service=key)
                                    for s in slices(ref.namespace, ref.name))
    secrets: dict[str, TLSSecret] = {}
    for li in gw.listeners:
        for ref in li.certificate_refs:
            reads.add(("Secret", ref.namespace, ref.name))
            entry = secret(ref.namespace, ref.name)
            if entry is None:
                continue
            # Another namespace's Secret is served from a copy in the Gateway's (the
            # proxy's agent reads its own namespace only): the build decides whether a
            # ReferenceGrant allows it, the operator makes the copy.
            key = secret_key(gw, ref.namespace, ref.name)
            secrets[key] = dataclasses.replace(entry, name=key)
    return ClusterState(services, found_slices, secrets, previous_slots), reads


# ------------------------------------------------------------------------- routes


@dataclass(frozen=True)
class _Entry:
    """One match of one rule of one attached route, on one listener and hostname."""

    listener: int
    hostname: str
    route: g.HTTPRoute
    rule: int
    match: int


def _selects(ref: g.ParentRef, gw: g.Gateway) -> bool:
    return (ref.group == g.GROUP and ref.kind == "Gateway" and ref.namespace == gw.namespace
            and ref.name == gw.name)


def _route_rules_problem(route: g.HTTPRoute) -> Condition | None:
    for i, rule in enumerate(route.rules):
        for f in rule.filters:
            if f.type not in SUPPORTED_FILTERS:
                return Condition(g.ACCEPTED, False, g.REASON_UNSUPPORTED_VALUE,
                                 f"spec.rules[{i}]: filter {f.type!r} is not supported")
        if any(rule.backend_filters):
            return Condition(g.ACCEPTED, False, g.REASON_UNSUPPORTED_VALUE,
                             f"spec.rules[{i}].backendRefs: filters on a backendRef are not "
                             "supported (put them on the rule)")
    return None


def _backend_problem(route: g.HTTPRoute, grants: list[g.ReferenceGrant],
                     cluster: ClusterState) -> Condition:
    for i, rule in enumerate(route.rules):
        for j, ref in enumerate(rule.backend_refs):
            problem = backend_ref_problem(route, ref, grants, cluster)
            if problem is not None:
                reason, message = problem
                return Condition(g.RESOLVED_REFS, False, reason,
                                 f"spec.rules[{i}].backendRefs[{j}]: {message}")
    return Condition(g.RESOLVED_REFS, True, g.REASON_RESOLVED_REFS)


def backend_ref_problem(route: g.HTTPRoute, ref: g.ObjectRef, grants: list[g.ReferenceGrant],
                        cluster: ClusterState) -> tuple[str, str] | None:
    if ref.group != "" or ref.kind != "Service":
        return g.REASON_INVALID_KIND, f"{ref.group or 'core'}/{ref.kind} is not a Service"
    if not g.permitted(grants, g.GROUP, "HTTPRoute", route.namespace, ref):
        return g.REASON_REF_NOT_PERMITTED, (f"Service {ref.namespace}/{ref.name} is in another "
                                            "namespace and no ReferenceGrant there allows it")
    svc = cluster.services.get(service_key(ref.namespace, ref.name))
    if svc is None:
        return g.REASON_BACKEND_NOT_FOUND, f"Service {ref.namespace}/{ref.name} not found"
    if ref.port is None or svc.find_port(ref.port) is None:
        return g.REASON_BACKEND_NOT_FOUND, (f"Service {ref.namespace}/{ref.name} has no port "
                                            f"{ref.port}")
    return None


def _attach(gw: g.Gateway, routes: list[g.HTTPRoute], listeners: list[ListenerResult],
            grants: list[g.ReferenceGrant], cluster: ClusterState,
            namespace_labels: Mapping[str, Mapping[str, str]]
            ) -> tuple[list[_Entry], dict[tuple[str, str], list[ParentResult]]]:
    entries: list[_Entry] = []
    statuses: dict[tuple[str, str], list[ParentResult]] = {}
    by_name = {r.name: r for r in listeners}
    for route in sorted(routes, key=lambda r: (r.created, r.namespace, r.name)):
        refs = _backend_problem(route, grants, cluster)
        unsupported = _route_rules_problem(route)
        parents: list[ParentResult] = []
        attached_to: set[int] = set()
        for ref in route.parent_refs:
            if not _selects(ref, gw):
                continue
            accepted, chosen = _parent(gw, route, ref, by_name, namespace_labels)
            if accepted.status and unsupported is not None:
                accepted = unsupported
            if accepted.status:
                for li, hosts in chosen:
                    attached_to.add(li)
                    for host in hosts:
                        entries.extend(_Entry(li, host, route, i, k)
                                       for i, rule in enumerate(route.rules)
                                       for k in range(len(rule.matches)))
            parents.append(ParentResult(ref, (accepted, refs)))
        for li in attached_to:
            listeners[li].attached_routes += 1
        if parents:
            statuses[(route.namespace, route.name)] = parents
    return entries, statuses


def _parent(gw: g.Gateway, route: g.HTTPRoute, ref: g.ParentRef,
            by_name: Mapping[str, ListenerResult],
            namespace_labels: Mapping[str, Mapping[str, str]]
            ) -> tuple[Condition, list[tuple[int, list[str]]]]:
    """Whether the parentRef attaches, and to which listeners with which hostnames."""
    candidates = [(i, li) for i, li in enumerate(gw.listeners)
                  if (ref.section_name is None or li.name == ref.section_name)
                  and (ref.port is None or li.port == ref.port)]
    if not candidates:
        return Condition(g.ACCEPTED, False, g.REASON_NO_MATCHING_PARENT,
                         "no listener of the Gateway matches the parentRef's "
                         "sectionName/port"), []
    allowed = [(i, li) for i, li in candidates
               if by_name[li.name].valid and g.HTTP_ROUTE_KIND in by_name[li.name].supported_kinds
               and _namespace_allowed(li.allowed_routes, gw.namespace, route.namespace,
                                      namespace_labels)]
    if not allowed:
        return Condition(g.ACCEPTED, False, g.REASON_NOT_ALLOWED_BY_LISTENERS,
                         "no listener the parentRef selects allows this route"), []
    chosen = [(i, hosts) for i, li in allowed
              if (hosts := effective_hostnames(li.hostname, route.hostnames))]
    if not chosen:
        return Condition(g.ACCEPTED, False, g.REASON_NO_MATCHING_LISTENER_HOSTNAME,
                         "no hostname of the route matches a listener's hostname"), []
    return Condition(g.ACCEPTED, True, g.REASON_ACCEPTED), chosen


# ------------------------------------------------------------------------- the graph


def pool_name(route: g.HTTPRoute, rule: int) -> str:
    digest = hashlib.sha256(f"{route.namespace}/{route.name}/{rule}".encode()).hexdigest()[:10]
    return f"gw_{digest}_{rule}"


def _rule_key(e: _Entry) -> tuple[object, ...]:
    m = e.route.rules[e.rule].matches[e.match]
    path_type = _PATH_TYPES.get(m.path.type, "Prefix")
    length = len(normalized_prefix(m.path.value)) if path_type != "RegularExpression" else 0
    return (specificity(e.hostname), PATH_RANK[path_type], -length,
            0 if m.method else 1, -len(m.headers), -len(m.query_params),
            e.route.created, e.route.namespace, e.route.name, e.rule, e.match)


def build_gateway_graph(gw: g.Gateway, routes: list[g.HTTPRoute],
                        grants: list[g.ReferenceGrant], cluster: ClusterState,
                        namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
                        ) -> GatewayBuild:
    problems: list[Problem] = []
    listeners, certs = _listener_results(gw, grants, cluster, problems)
    entries, statuses = _attach(gw, routes, listeners, grants, cluster, namespace_labels or {})

    pools: dict[str, Pool] = {}
    answers: dict[str, int] = {}  # pool name -> the status a rule without backends answers
    seen: dict[str, WeightedEndpoint] = {}
    for route in {e.route for e in entries}:
        for i, rule in enumerate(route.rules):
            name = pool_name(route, i)
            if _redirect_filter(rule) is not None:
                continue
            backends = [(f"HTTPRoute {route.namespace}/{route.name} spec.rules[{i}]"
                         f".backendRefs[{j}]",
                         Backend(service_key(ref.namespace, ref.name), ref.port or 0, ref.weight))
                        for j, ref in enumerate(rule.backend_refs)
                        if backend_ref_problem(route, ref, grants, cluster) is None]
            if not backends or all(b.weight == 0 for _, b in backends):
                answers[name] = NO_BACKENDS_STATUS
                continue
            endpoints = resolve_backends(backends, gw.namespace, cluster, problems)
            seen.update({e.key: e for e in endpoints})
            servers = assign_slots(endpoints, cluster.previous_slots.get(name, {}))
            pools[name] = _pool(name, servers, rule)

    frontends = _frontends(gw, listeners, certs, entries, answers)
    certificates = {c.file: c for cs in certs.values() for c in cs}
    return GatewayBuild(
        graph=ProxyGraph(
            kind="Gateway", name=gw.name, namespace=gw.namespace,
            frontends=tuple(frontends),
            pools=tuple(sorted(pools.values(), key=lambda p: p.name)),
            certificates=tuple(sorted(certificates.values(), key=lambda c: c.file)),
            timeouts=Timeouts(), limits=Limits(), access_log=AccessLog(),
            problems=tuple(problems),
            backends_ready=sum(1 for e in seen.values() if e.ready),
            backends_total=len(seen)),
        listeners=listeners,
        conditions=_gateway_conditions(listeners),
        routes=statuses,
    )


def _gateway_conditions(listeners: list[ListenerResult]) -> list[Condition]:
    valid = [li for li in listeners if li.valid]
    if listeners and not valid:
        return [Condition(g.ACCEPTED, False, g.REASON_LISTENERS_NOT_VALID,
                          "no listener is valid")]
    if len(valid) < len(listeners):
        return [Condition(g.ACCEPTED, True, g.REASON_LISTENERS_NOT_VALID,
                          "some listeners are not valid; the others are served")]
    return [Condition(g.ACCEPTED, True, g.REASON_ACCEPTED)]


def _redirect_filter(rule: g.RouteRule) -> g.RequestRedirect | None:
    return next((f.redirect for f in rule.filters if f.redirect is not None), None)


def _changes(m: g.HeaderModifier | None) -> HeaderChanges | None:
    if m is None:
        return None
    return HeaderChanges(set=m.set, add=m.add, remove=m.remove) or None


def _pool(name: str, servers: tuple[Server, ...], rule: g.RouteRule) -> Pool:
    request = response = None
    rewrite: PathRewrite | None = None
    host_rewrite: str | None = None
    for f in rule.filters:
        if f.type == "RequestHeaderModifier":
            request = _changes(f.request_headers)
        elif f.type == "ResponseHeaderModifier":
            response = _changes(f.response_headers)
        elif f.type == "URLRewrite" and f.rewrite is not None:
            host_rewrite = f.rewrite.hostname
            if f.rewrite.path_type == "ReplacePrefixMatch" and f.rewrite.path_value is not None:
                prefix = next((m.path.value for m in rule.matches
                               if m.path.type == "PathPrefix"), "/")
                rewrite = PathRewrite(normalized_prefix(prefix), f.rewrite.path_value)
            elif f.rewrite.path_type == "ReplaceFullPath" and f.rewrite.path_value is not None:
                rewrite = PathRewrite("", f.rewrite.path_value, full=True)
    if host_rewrite:
        base = request or HeaderChanges()
        request = HeaderChanges(set=tuple(sorted((*base.set, ("Host", host_rewrite)))),
                                add=base.add, remove=base.remove)
    return Pool(name=name, mode="http", algorithm="roundrobin", servers=servers,
                request_headers=request, response_headers=response, rewrite=rewrite)


def _frontends(gw: g.Gateway, listeners: list[ListenerResult],
               certs: Mapping[str, list[Certificate]], entries: list[_Entry],
               answers: Mapping[str, int]) -> list[Frontend]:
    valid = [i for i, li in enumerate(gw.listeners) if listeners[i].served]
    out = []
    for port in sorted({gw.listeners[i].port for i in valid}):
        on_port = sorted((i for i in valid if gw.listeners[i].port == port),
                         key=lambda i: specificity(gw.listeners[i].hostname or ""))
        protocol = gw.listeners[on_port[0]].protocol
        files: list[str] = []
        if protocol == "HTTPS":
            files = list(dict.fromkeys(c.file for i in on_port
                                       for c in certs.get(gw.listeners[i].name, [])))
            if not files:
                continue  # no usable certificate on this port
        out.append(Frontend(
            name=f"fe_{port}", port=port, mode="http", protocol=protocol, default_pool=None,
            certificate=files[0] if files else None,
            extra_certificates=tuple(files[1:]),
            routing=_routing(gw, on_port, entries, answers, protocol, port)))
    return out


def _routing(gw: g.Gateway, on_port: list[int], entries: list[_Entry],
             answers: Mapping[str, int], protocol: str, port: int) -> Routing:
    vhosts: list[VirtualHost] = []
    rules: list[RouteRule] = []
    for li in on_port:
        listener = gw.listeners[li]
        mine = [e for e in entries if e.listener == li]
        hosts = sorted({e.hostname for e in mine} | {listener.hostname or ""}, key=specificity)
        for k, host in enumerate(hosts):
            vhost = VirtualHost(f"l{li}h{k}", host)
            vhosts.append(vhost)
            served = sorted((e for e in mine if covers(e.hostname, host)), key=_rule_key)
            for n, e in enumerate(served):
                rules.append(_route_rule(f"{vhost.id}r{n}", vhost, e, answers, protocol, port))
    return Routing(tuple(vhosts), tuple(rules), not_found=True)


def _route_rule(rule_id: str, vhost: VirtualHost, e: _Entry, answers: Mapping[str, int],
                protocol: str, port: int) -> RouteRule:
    rule = e.route.rules[e.rule]
    m = rule.matches[e.match]
    path_type = _PATH_TYPES.get(m.path.type, "Prefix")
    path = normalized_prefix(m.path.value) if path_type == "Prefix" else m.path.value
    redirect = _redirect_filter(rule)
    pool = pool_name(e.route, e.rule)
    return RouteRule(
        id=rule_id, host_id=vhost.id, hostname=vhost.hostname,
        route=f"{e.route.namespace}/{e.route.name}",
        path_type=path_type, path=path,
        headers=tuple(HeaderMatch(h.name, h.value, h.type) for h in m.headers),
        query_params=tuple(HeaderMatch(q.name, q.value, q.type) for q in m.query_params),
        method=m.method,
        pool=None if redirect or pool in answers else pool,
        redirect=_redirect_rule(redirect, protocol, port, m) if redirect else None,
        status=answers.get(pool) if not redirect else None,
        services=tuple(dict.fromkeys(service_key(r.namespace, r.name)
                                     for r in rule.backend_refs)),
    )


def _redirect_rule(r: g.RequestRedirect, protocol: str, port: int,
                   match: g.RouteMatch) -> RedirectRule:
    """Location as the spec derives it: the scheme's well-known port is never written; with
    no port and no scheme, the listener's port."""
    current = "https" if protocol == "HTTPS" else "http"
    scheme = r.scheme or current
    target = r.port if r.port is not None else (DEFAULT_PORTS[scheme] if r.scheme else port)
    shown = None if target == DEFAULT_PORTS.get(scheme) else target
    path = None
    prefix = None
    if r.path_type == "ReplaceFullPath":
        path = r.path_value
    elif r.path_type == "ReplacePrefixMatch" and match.path.type == "PathPrefix":
        prefix = (normalized_prefix(match.path.value), r.path_value or "/")
    return RedirectRule(scheme, r.hostname, True, shown, path, r.status_code,
                        replace_prefix=prefix)

