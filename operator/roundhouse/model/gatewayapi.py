"""Gateway API objects (gateway.networking.k8s.io/v1): GatewayClass, Gateway, HTTPRoute and
ReferenceGrant, typed. Pure: no I/O.

The API server validated these against the upstream CRDs (OpenAPI and CEL), so parsing
trusts their shape and applies the upstream defaults; what the CRDs cannot check (a
reference that resolves, a feature Roundhouse does not support) is decided in
graph/gateway.py, which reports it with the reasons the spec names (below).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from roundhouse.model.common import Limits, ProxySettings, SessionPersistence

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
CONTROLLER_NAME = "roundhouse.dev/gateway-controller"

# Condition types and reasons of the spec (apis/v1 *_types.go), the ones used here.
ACCEPTED = "Accepted"
PROGRAMMED = "Programmed"
RESOLVED_REFS = "ResolvedRefs"
CONFLICTED = "Conflicted"
SUPPORTED_VERSION = "SupportedVersion"
REASON_ACCEPTED = "Accepted"
REASON_PROGRAMMED = "Programmed"
REASON_RESOLVED_REFS = "ResolvedRefs"
REASON_PENDING = "Pending"
REASON_INVALID = "Invalid"
REASON_NO_CONFLICTS = "NoConflicts"
REASON_PROTOCOL_CONFLICT = "ProtocolConflict"
REASON_HOSTNAME_CONFLICT = "HostnameConflict"
REASON_UNSUPPORTED_PROTOCOL = "UnsupportedProtocol"
REASON_INVALID_ROUTE_KINDS = "InvalidRouteKinds"
REASON_INVALID_CERTIFICATE_REF = "InvalidCertificateRef"
REASON_REF_NOT_PERMITTED = "RefNotPermitted"
REASON_LISTENERS_NOT_VALID = "ListenersNotValid"
REASON_NOT_ALLOWED_BY_LISTENERS = "NotAllowedByListeners"
REASON_NO_MATCHING_LISTENER_HOSTNAME = "NoMatchingListenerHostname"
REASON_NO_MATCHING_PARENT = "NoMatchingParent"
REASON_BACKEND_NOT_FOUND = "BackendNotFound"
REASON_INVALID_KIND = "InvalidKind"
REASON_UNSUPPORTED_VALUE = "UnsupportedValue"
REASON_SUPPORTED_VERSION = "SupportedVersion"

HTTP_ROUTE_KIND = (GROUP, "HTTPRoute")


@dataclass(frozen=True)
class GatewayClass:
    name: str
    controller_name: str
    generation: int


@dataclass(frozen=True)
class ObjectRef:
    """A certificateRef or backendRef: group "" is the core group."""

    group: str
    kind: str
    name: str
    namespace: str  # defaulted to the referring object's namespace
    port: int | None = None
    weight: int = 1


@dataclass(frozen=True)
class AllowedRoutes:
    namespaces_from: str = "Same"  # Same | All | Selector
    selector: dict[str, Any] | None = None  # a LabelSelector (matchLabels, matchExpressions)
    kinds: tuple[tuple[str, str], ...] = ()  # (group, kind); empty: the protocol's kinds


@dataclass(frozen=True)
class GatewayListener:
    name: str
    port: int
    protocol: str  # HTTP | HTTPS | TLS | TCP | UDP | anything else (unsupported)
    hostname: str | None = None
    tls_mode: str = "Terminate"
    certificate_refs: tuple[ObjectRef, ...] = ()
    allowed_routes: AllowedRoutes = field(default_factory=AllowedRoutes)


@dataclass(frozen=True)
class Gateway:
    """A Gateway; the fields after `listeners` are what its proxy shares with the other
    kinds' (pipeline.complete reads them): Gateway API has no field for them, so they
    are Roundhouse's defaults (2 replicas spread over nodes, a PodDisruptionBudget)."""

    name: str
    namespace: str
    uid: str
    generation: int
    class_name: str
    listeners: tuple[GatewayListener, ...]
    proxy: ProxySettings = field(default_factory=ProxySettings)
    limits: Limits = field(default_factory=Limits)
    session_persistence: SessionPersistence | None = None
    allowed_source_ranges: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParentRef:
    group: str
    kind: str
    namespace: str  # defaulted to the route's namespace
    name: str
    section_name: str | None = None
    port: int | None = None

    def raw(self) -> dict[str, Any]:
        """As status.parents[].parentRef echoes it (the spec's defaults written out)."""
        out: dict[str, Any] = {"group": self.group, "kind": self.kind, "name": self.name,
                               "namespace": self.namespace}
        if self.section_name is not None:
            out["sectionName"] = self.section_name
        if self.port is not None:
            out["port"] = self.port
        return out


@dataclass(frozen=True)
class PathMatch:
    type: str = "PathPrefix"  # Exact | PathPrefix | RegularExpression
    value: str = "/"


@dataclass(frozen=True)
class ValueMatch:
    """A header or query parameter match."""

    name: str
    value: str
    type: str = "Exact"  # Exact | RegularExpression


@dataclass(frozen=True)
class RouteMatch:
    path: PathMatch = field(default_factory=PathMatch)
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = ()
    method: str | None = None


@dataclass(frozen=True)
class HeaderModifier:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestRedirect:
    scheme: str | None = None
    hostname: str | None = None
    path_type: str | None = None  # ReplaceFullPath | ReplacePrefixMatch
    path_value: str | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True)
class URLRewrite:
    hostname: str | None = None
    path_type: str | None = None
    path_value: str | None = None


@dataclass(frozen=True)
class Filter:
    type: str
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: RequestRedirect | None = None
    rewrite: URLRewrite | None = None


@dataclass(frozen=True)
class RouteRule:
    matches: tuple[RouteMatch, ...]
    filters: tuple[Filter, ...] = ()
    backend_refs: tuple[ObjectRef, ...] = ()
    backend_filters: tuple[tuple[Filter, ...], ...] = ()  # per backendRef


@dataclass(frozen=True)
class HTTPRoute:
    name: str
    namespace: str
    generation: int
    created: str  # metadata.creationTimestamp: the older route wins ties
    parent_refs: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[RouteRule, ...]


@dataclass(frozen=True)
class GrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True)
class GrantTo:
    group: str
    kind: str
    name: str | None = None


@dataclass(frozen=True)
class ReferenceGrant:
    namespace: str
    from_: tuple[GrantFrom, ...]
    to: tuple[GrantTo, ...]


def permitted(grants: tuple[ReferenceGrant, ...] | list[ReferenceGrant], from_group: str,
              from_kind: str, from_namespace: str, to: ObjectRef) -> bool:
    """A reference into another namespace is allowed only by a ReferenceGrant there."""
    if to.namespace == from_namespace:
        return True
    for g in grants:
        if g.namespace != to.namespace:
            continue
        if not any(f.group == from_group and f.kind == from_kind
                   and f.namespace == from_namespace for f in g.from_):
            continue
        if any(t.group == to.group and t.kind == to.kind and t.name in (None, to.name)
               for t in g.to):
            return True
    return False


# ------------------------------------------------------------------------- parsing


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def parse_gateway_class(obj: dict[str, Any]) -> GatewayClass:
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    return GatewayClass(str(meta.get("name") or ""), str(spec.get("controllerName") or ""),
                        int(meta.get("generation") or 0))


def _ref(raw: dict[str, Any], namespace: str, default_kind: str, default_group: str = "",
         weight: bool = False) -> ObjectRef:
    return ObjectRef(
        group=str(raw.get("group") if raw.get("group") is not None else default_group),
        kind=str(raw.get("kind") or default_kind),
        name=str(raw.get("name") or ""),
        namespace=str(raw.get("namespace") or namespace),
        port=int(raw["port"]) if raw.get("port") is not None else None,
        weight=int(raw["weight"]) if weight and raw.get("weight") is not None else 1,
    )


def _allowed_routes(raw: dict[str, Any]) -> AllowedRoutes:
    namespaces = raw.get("namespaces") or {}
    kinds = tuple((str(k.get("group") if k.get("group") is not None else GROUP),
                   str(k.get("kind") or "")) for k in raw.get("kinds") or [])
    return AllowedRoutes(str(namespaces.get("from") or "Same"),
                         namespaces.get("selector"), kinds)


def parse_gateway(obj: dict[str, Any]) -> Gateway:
    meta = _meta(obj)
    namespace = str(meta.get("namespace") or "default")
    spec = obj.get("spec") or {}
    listeners = []
    for li in spec.get("listeners") or []:
        tls = li.get("tls") or {}
        listeners.append(GatewayListener(
            name=str(li.get("name") or ""),
            port=int(li.get("port") or 0),
            protocol=str(li.get("protocol") or ""),
            hostname=str(li["hostname"]).lower() if li.get("hostname") else None,
            tls_mode=str(tls.get("mode") or "Terminate"),
            certificate_refs=tuple(_ref(r, namespace, "Secret")
                                   for r in tls.get("certificateRefs") or []),
            allowed_routes=_allowed_routes(li.get("allowedRoutes") or {}),
        ))
    return Gateway(str(meta.get("name") or ""), namespace, str(meta.get("uid") or ""),
                   int(meta.get("generation") or 0), str(spec.get("gatewayClassName") or ""),
                   tuple(listeners))


def _value_matches(raw: list[dict[str, Any]] | None) -> tuple[ValueMatch, ...]:
    return tuple(ValueMatch(str(m.get("name") or ""), str(m.get("value") or ""),
                            str(m.get("type") or "Exact")) for m in raw or [])


def _match(raw: dict[str, Any]) -> RouteMatch:
    path = raw.get("path") or {}
    return RouteMatch(
        path=PathMatch(str(path.get("type") or "PathPrefix"), str(path.get("value") or "/")),
        headers=_value_matches(raw.get("headers")),
        query_params=_value_matches(raw.get("queryParams")),
        method=str(raw["method"]) if raw.get("method") else None,
    )


def _modifier(raw: dict[str, Any] | None) -> HeaderModifier | None:
    if raw is None:
        return None
    return HeaderModifier(
        set=tuple((str(h["name"]), str(h.get("value") or "")) for h in raw.get("set") or []),
        add=tuple((str(h["name"]), str(h.get("value") or "")) for h in raw.get("add") or []),
        remove=tuple(str(n) for n in raw.get("remove") or []),
    )


def _path_modifier(raw: dict[str, Any] | None) -> tuple[str | None, str | None]:
    if not raw:
        return None, None
    kind = str(raw.get("type") or "")
    value = raw.get("replaceFullPath") if kind == "ReplaceFullPath" else raw.get(
        "replacePrefixMatch")
    return kind, str(value) if value is not None else None


def _filter(raw: dict[str, Any]) -> Filter:
    kind = str(raw.get("type") or "")
    if kind == "RequestRedirect":
        r = raw.get("requestRedirect") or {}
        path_type, path_value = _path_modifier(r.get("path"))
        return Filter(kind, redirect=RequestRedirect(
            scheme=r.get("scheme"), hostname=r.get("hostname"), path_type=path_type,
            path_value=path_value, port=int(r["port"]) if r.get("port") else None,
            status_code=int(r.get("statusCode") or 302)))
    if kind == "URLRewrite":
        r = raw.get("urlRewrite") or {}
        path_type, path_value = _path_modifier(r.get("path"))
        return Filter(kind, rewrite=URLRewrite(r.get("hostname"), path_type, path_value))
    return Filter(kind, request_headers=_modifier(raw.get("requestHeaderModifier")),
                  response_headers=_modifier(raw.get("responseHeaderModifier")))


def parse_httproute(obj: dict[str, Any]) -> HTTPRoute:
    meta = _meta(obj)
    namespace = str(meta.get("namespace") or "default")
    spec = obj.get("spec") or {}
    parents = tuple(ParentRef(
        group=str(p.get("group") if p.get("group") is not None else GROUP),
        kind=str(p.get("kind") or "Gateway"),
        namespace=str(p.get("namespace") or namespace),
        name=str(p.get("name") or ""),
        section_name=str(p["sectionName"]) if p.get("sectionName") else None,
        port=int(p["port"]) if p.get("port") else None,
    ) for p in spec.get("parentRefs") or [])
    rules = []
    for r in spec.get("rules") or [{}]:
        refs = r.get("backendRefs") or []
        rules.append(RouteRule(
            matches=tuple(_match(m) for m in r.get("matches") or [{}]),
            filters=tuple(_filter(f) for f in r.get("filters") or []),
            backend_refs=tuple(_ref(b, namespace, "Service", weight=True) for b in refs),
            backend_filters=tuple(tuple(_filter(f) for f in b.get("filters") or [])
                                  for b in refs),
        ))
    return HTTPRoute(str(meta.get("name") or ""), namespace, int(meta.get("generation") or 0),
                     str(meta.get("creationTimestamp") or ""), parents,
                     tuple(str(h).lower() for h in spec.get("hostnames") or []), tuple(rules))


def parse_reference_grant(obj: dict[str, Any]) -> ReferenceGrant:
    spec = obj.get("spec") or {}
    return ReferenceGrant(
        str(_meta(obj).get("namespace") or "default"),
        tuple(GrantFrom(str(f.get("group") or ""), str(f.get("kind") or ""),
                        str(f.get("namespace") or "")) for f in spec.get("from") or []),
        tuple(GrantTo(str(t.get("group") or ""), str(t.get("kind") or ""),
                      str(t["name"]) if t.get("name") else None) for t in spec.get("to") or []),
    )
