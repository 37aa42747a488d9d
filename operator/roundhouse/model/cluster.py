"""Typed views of the cluster objects a reconcile reads: Services, EndpointSlices, Secrets.

Pure parsing of API dicts; the handlers hand these in, so graph-building needs no client.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    ports: tuple[ServicePort, ...]
    address: str | None = None  # load-balancer ingress if any, else the cluster IP

    def find_port(self, wanted: int | str) -> ServicePort | None:
        for sp in self.ports:
            if sp.port == wanted or (isinstance(wanted, str) and sp.name == wanted):
                return sp
        return None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address behind a Service port, with its readiness as the EndpointSlice says."""

    identity: str  # stable: the target Pod's name, else the address
    address: str
    port: int
    ready: bool
    serving: bool
    terminating: bool
    zone: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    name: str
    service: str
    ports: tuple[tuple[str, int], ...]  # (port name, number) for TCP ports
    endpoints: tuple[tuple[str, str, bool, bool, bool, str | None], ...]
    # (identity, address, ready, serving, terminating, zone)

    def endpoints_for(self, port_name: str) -> list[Endpoint]:
        number = next((n for name, n in self.ports if name == port_name), None)
        if number is None:
            return []
        return [Endpoint(ident, addr, number, ready, serving, term, zone)
                for ident, addr, ready, serving, term, zone in self.endpoints]


@dataclass(frozen=True, slots=True)
class TLSSecret:
    name: str
    has_cert: bool
    has_key: bool
    fingerprint: str  # sha256 of tls.crt + tls.key: changes on rotation, reveals nothing
    # ca.crt (any Secret type): a CA bundle that verifies upstream servers (upstreamTLS).
    has_ca: bool = False
    ca_fingerprint: str = ""  # sha256 of ca.crt, same scheme as the agent's ca_fingerprint
    # Why a present pair is still unusable (tls.key does not match tls.crt, ...): caught
    # here, in status, instead of by the proxies refusing the configuration.
    problem: str = ""

    @property
    def usable(self) -> bool:
        return self.has_cert and self.has_key and not self.problem


def parse_service(obj: dict[str, Any]) -> Service:
    spec = obj.get("spec") or {}
    ports = tuple(
        ServicePort(str(p.get("name") or ""), int(p["port"]), str(p.get("protocol") or "TCP"))
        for p in spec.get("ports") or []
        if p.get("port") is not None
    )
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    address = next((i.get("ip") or i.get("hostname") for i in ingress
                    if i.get("ip") or i.get("hostname")), None)
    cluster_ip = spec.get("clusterIP")
    if not address and cluster_ip and cluster_ip != "None":
        address = str(cluster_ip)
    return Service(str(obj["metadata"]["name"]), ports, address)


def parse_endpoint_slice(obj: dict[str, Any]) -> EndpointSlice | None:
    """None for slices that are not about a Service, or not IP-based."""
    meta = obj.get("metadata") or {}
    service = (meta.get("labels") or {}).get("kubernetes.io/service-name")
    if not service or obj.get("addressType") not in ("IPv4", "IPv6"):
        return None
    ports = tuple(
        (str(p.get("name") or ""), int(p["port"]))
        for p in obj.get("ports") or []
        if p.get("port") is not None and (p.get("protocol") or "TCP") == "TCP"
    )
    endpoints = []
    for ep in obj.get("endpoints") or []:
        cond = ep.get("conditions") or {}
        # Per the EndpointSlice API, a nil 'ready' means ready; nil serving follows ready.
        ready = cond.get("ready") is not False
        serving = cond.get("serving") if cond.get("serving") is not None else ready
        terminating = bool(cond.get("terminating"))
        target = ep.get("targetRef") or {}
        for address in ep.get("addresses") or []:
            if not _is_ip(address, obj["addressType"]):
                continue  # the API server stores none such; offline input may hold any text
            identity = str(target.get("name") or address)
            endpoints.append((identity, str(address), ready, bool(serving), terminating,
                              ep.get("zone")))
    return EndpointSlice(str(meta.get("name") or ""), str(service), ports, tuple(endpoints))


def _is_ip(address: Any, address_type: str) -> bool:
    """An endpoint address as the API server validates it: an IP of the slice's family,
    with no zone (Python accepts any text after '%'): it goes verbatim onto a server line
    of haproxy.cfg."""
    if not isinstance(address, str) or "%" in address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == (4 if address_type == "IPv4" else 6)


def parse_tls_secret(obj: dict[str, Any]) -> TLSSecret:
    """A serving pair (tls.crt + tls.key), a CA bundle (ca.crt), or both."""
    data = obj.get("data") or {}
    crt = _decode(data.get("tls.crt"))
    key = _decode(data.get("tls.key"))
    ca = _decode(data.get("ca.crt"))
    digest = hashlib.sha256(crt + b"\0" + key).hexdigest()[:32]
    has_cert, has_key = b"BEGIN CERTIFICATE" in crt, b"PRIVATE KEY" in key
    return TLSSecret(str(obj["metadata"]["name"]), has_cert, has_key, digest,
                     has_ca=b"BEGIN CERTIFICATE" in ca,
                     ca_fingerprint=ca_fingerprint(ca) if ca else "",
                     problem=pair_problem(crt, key) if has_cert and has_key else "")


def pair_problem(crt: bytes, key: bytes) -> str:
    """"" when tls.key is the private key of the first certificate in tls.crt.

    Messages never quote key material, only what is wrong.
    """
    try:
        cert = x509.load_pem_x509_certificate(crt)
    except ValueError:
        return "tls.crt is not a valid PEM certificate"
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        return "tls.key is not a valid unencrypted PEM private key"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if private.public_key().public_bytes(encoding, public) != cert.public_key().public_bytes(
            encoding, public):
        return "tls.key does not match the certificate in tls.crt"
    return ""


def ca_fingerprint(ca: bytes) -> str:
    return hashlib.sha256(b"ca\0" + ca).hexdigest()[:32]


def _decode(value: Any) -> bytes:
    if not value:
        return b""
    try:
        return base64.b64decode(value)
    except (ValueError, TypeError):
        return b""
