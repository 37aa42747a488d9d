"""ProxyGraph + rendered config -> the Kubernetes children of a resource. Pure.

Every builder returns a plain dict ready for server-side apply, owned by the
resource (controller owner reference), so garbage collection removes it.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from roundhouse import API_GROUP, API_VERSION
from roundhouse.graph import names
from roundhouse.graph.types import ProxyGraph
from roundhouse.model.gatewayapi import Gateway
from roundhouse.model.loadbalancer import LoadBalancer
from roundhouse.model.pod import AGENT_METRICS_PORT
from roundhouse.model.reverseproxy import ReverseProxy
from roundhouse.render import payload
from roundhouse.render.haproxy import RenderedConfig

RUNTIME_DIR = "/var/run/roundhouse"
PROXY_UID = 10001  # any non-root uid: both images run unprivileged


@dataclass(frozen=True)
class ProxyImages:
    haproxy: str = "haproxy:3.4"
    agent: str = "roundhouse:0.1.0"
    pull_policy: str = "IfNotPresent"


@dataclass(frozen=True)
class Owner:
    kind: str
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": "gateway.networking.k8s.io/v1" if self.kind == "Gateway"
            else f"{API_GROUP}/{API_VERSION}",
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def owner_of(model: LoadBalancer | ReverseProxy | Gateway) -> Owner:
    """The owner of a resource's children, whichever kind the resource is."""
    return Owner(names.kind_of(model), model.name, model.namespace, model.uid)


@dataclass(frozen=True)
class ProxySpec:
    """The parts of a resource's spec that shape the proxy's Pods and Service."""

    replicas: int
    service_type: str
    resources: dict[str, Any]
    node_selector: dict[str, str]
    tolerations: tuple[dict[str, Any], ...]
    preserve_client_ip: bool = False


def labels(owner: Owner) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "roundhouse-proxy",
        "app.kubernetes.io/instance": names.child_name(owner.kind, owner.name),
        "app.kubernetes.io/managed-by": "roundhouse",
        f"{API_GROUP}/owner-kind": owner.kind,
        f"{API_GROUP}/owner-name": owner.name,
    }


def selector(owner: Owner) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "roundhouse-proxy",
        "app.kubernetes.io/instance": names.child_name(owner.kind, owner.name),
    }


def _meta(owner: Owner, name: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner),
        "ownerReferences": [owner.reference()],
    }
    meta.update(extra)
    return meta


def child_meta(owner: Owner, name: str) -> dict[str, Any]:
    """The metadata of a child named `name`: in the owner's namespace, labelled and owned."""
    return _meta(owner, name)


def agent_status_name(owner: Owner) -> str:
    return names.agent_status_name(owner.kind, owner.name)


def config_map(owner: Owner, rendered: RenderedConfig) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(owner, names.child_name(owner.kind, owner.name), annotations={
            f"{API_GROUP}/config-hash": rendered.config_hash,
            f"{API_GROUP}/structure-hash": rendered.structure_hash,
        }),
    }
    data, binary = payload.encode(
        {"haproxy.cfg": rendered.config, "servers.json": rendered.server_state_json()})
    return obj | ({"data": data} if data else {}) | ({"binaryData": binary} if binary else {})


def agent_status_config_map(owner: Owner) -> dict[str, Any]:
    """Where each agent reports the config hash it runs (one key per pod).

    Better than the pod annotation the design first named: patching a named
    ConfigMap needs no namespace-wide 'patch pods' right, which would let a
    compromised proxy relabel other Pods and hijack their Services.
    """
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(owner, agent_status_name(owner)),
    }


def service(owner: Owner, graph: ProxyGraph, proxy: ProxySpec,
            declared_ports: Iterable[int] = ()) -> dict[str, Any]:
    """`declared_ports`: every port the resource declares a listener on. A listener the
    graph dropped (no usable certificate, an invalid Gateway listener) keeps its port:
    the Service stays valid with every listener dropped (the API server refuses one with
    no ports), and its ports do not come and go while the user mends a listener."""
    ports = [{"name": f.name.removeprefix("fe_"), "port": f.port, "targetPort": f.port,
              "protocol": "TCP"} for f in graph.frontends]
    taken = {p["name"] for p in ports}
    for port in sorted(set(declared_ports) - {f.port for f in graph.frontends}):
        name = f"port-{port}"
        while name in taken:  # a listener already has that name
            name += "x"
        taken.add(name)
        ports.append({"name": name, "port": port, "targetPort": port, "protocol": "TCP"})
    spec: dict[str, Any] = {
        "type": proxy.service_type,
        "selector": selector(owner),
        "ports": ports,
    }
    if proxy.service_type != "ClusterIP":
        # Local keeps the client's address visible to HAProxy (SourceIP persistence, XFF,
        # per-client limits, allowedSourceRanges).
        spec["externalTrafficPolicy"] = "Local" if proxy.preserve_client_ip else "Cluster"
    if proxy.service_type == "LoadBalancer" and graph.allowed_source_ranges:
        # The cloud load balancer (and kube-proxy) filter too; HAProxy checks either way.
        spec["loadBalancerSourceRanges"] = list(graph.allowed_source_ranges)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(owner, names.child_name(owner.kind, owner.name)), "spec": spec}


def pod_disruption_budget(owner: Owner) -> dict[str, Any]:
    # maxUnavailable 1: with 2+ replicas a drain never takes the last one; with a
    # single replica the drain is not blocked forever.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(owner, names.child_name(owner.kind, owner.name)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(owner)},
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    }


def service_account(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": _meta(owner, names.child_name(owner.kind, owner.name))}


def agent_role(owner: Owner, graph: ProxyGraph) -> dict[str, Any]:
    name = names.child_name(owner.kind, owner.name)
    rules: list[dict[str, Any]] = [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [name],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["configmaps"],
         "resourceNames": [agent_status_name(owner)], "verbs": ["get", "patch"]},
    ]
    secrets = sorted({c.secret for c in graph.certificates})
    if secrets:  # never an empty resourceNames list: that would mean every Secret
        rules.append({"apiGroups": [""], "resources": ["secrets"], "resourceNames": secrets,
                      "verbs": ["get", "list", "watch"]})
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _meta(owner, name), "rules": rules}


def agent_role_binding(owner: Owner) -> dict[str, Any]:
    name = names.child_name(owner.kind, owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(owner, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def deployment(owner: Owner, graph: ProxyGraph, rendered: RenderedConfig, proxy: ProxySpec,
               images: ProxyImages) -> dict[str, Any]:
    name = names.child_name(owner.kind, owner.name)
    sel = selector(owner)
    runtime_mount = {"name": "runtime", "mountPath": RUNTIME_DIR}
    agent_env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    agent_args = ["agent", "--configmap", name, "--status-configmap", agent_status_name(owner),
                  "--runtime-dir", RUNTIME_DIR]
    probe = {"httpGet": {"path": "/healthz", "port": rendered.status_port}}
    haproxy = {
        "name": "haproxy",
        "image": images.haproxy,
        "imagePullPolicy": images.pull_policy,
        "args": ["-W", "-db", "-S", f"{RUNTIME_DIR}/master.sock",
                 "-f", f"{RUNTIME_DIR}/haproxy.cfg"],
        # No containerPort per listener: they are informational only (the Service
        # targets port numbers), and listing them would make adding a listener roll
        # every proxy Pod instead of the agent's hitless reload.
        "ports": [{"name": "status", "containerPort": rendered.status_port,
                   "protocol": "TCP"}],
        "readinessProbe": {**probe, "periodSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 6},
        # Let endpoint removal reach every client before HAProxy stops accepting.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "resources": proxy.resources or {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": _container_security(),
        # HAProxy's last words ("Cannot raise FD limit ...") reach the Pod status, and
        # from there the LoadBalancer's: a crash loop says why in `Programmed`.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [runtime_mount, {"name": "tmp", "mountPath": "/tmp"}],
    }
    agent = {
        "name": "agent",
        "image": images.agent,
        "imagePullPolicy": images.pull_policy,
        "args": agent_args,
        "env": agent_env,
        "ports": [{"name": "agent-metrics", "containerPort": AGENT_METRICS_PORT,
                   "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "20m", "memory": "64Mi"},
                      "limits": {"memory": "256Mi"}},
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [runtime_mount],
    }
    init = {**agent, "name": "agent-init", "args": [*agent_args, "--once"]}
    init.pop("ports")
    spread = [
        {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": sel}}
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
    ]
    pod_spec: dict[str, Any] = {
        "serviceAccountName": name,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "fsGroup": PROXY_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
            # Bind ports below 1024 without NET_BIND_SERVICE (a namespaced, safe sysctl).
            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
        },
        "initContainers": [init],
        "containers": [haproxy, agent],
        "terminationGracePeriodSeconds": 60,
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": sel}}}]}},
        "topologySpreadConstraints": spread,
        "volumes": [{"name": "runtime", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
    }
    if proxy.node_selector:
        pod_spec["nodeSelector"] = dict(proxy.node_selector)
    if proxy.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in proxy.tolerations]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        # The hash sits on the Deployment, not the pod template: a config change must
        # reach running proxies through the agent (hitless), never by rolling Pods.
        "metadata": _meta(owner, name, annotations={
            f"{API_GROUP}/structure-hash": rendered.structure_hash}),
        "spec": {
            "replicas": proxy.replicas,
            "selector": {"matchLabels": sel},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": labels(owner)}, "spec": pod_spec},
        },
    }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def tls_secret(owner: Owner, name: str, cert_pem: str, key_pem: str, ca_pem: str,
               not_after: str) -> dict[str, Any]:
    """A kubernetes.io/tls Secret; ca.crt lets clients verify it.

    `data` (not stringData): server-side apply tracks ownership of stored fields.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": _meta(owner, name, annotations={f"{API_GROUP}/not-after": not_after}),
        "data": {"tls.crt": _b64(cert_pem), "tls.key": _b64(key_pem), "ca.crt": _b64(ca_pem)},
    }


def to_json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True)


# Where a field of the proxy Deployment comes from in the resource's spec: when the API
# server refuses the Deployment, the user is told which of *their* fields caused it.
CHILD_FIELD_SOURCES = {
    "Deployment": (
        ("spec.template.spec.nodeSelector", "spec.proxy.nodeSelector"),
        ("spec.template.spec.tolerations", "spec.proxy.tolerations"),
        ("spec.template.spec.containers[0].resources", "spec.proxy.resources"),
        ("spec.replicas", "spec.proxy.replicas"),
    ),
}
_MAP_KEY = re.compile(r"\[([^\]0-9][^\]]*)\]")  # requests[cpu] -> requests.cpu


def resource_field(kind: str, child_field: str) -> str | None:
    """The resource's field a child's field (as the API server names it) comes from:
    spec.template.spec.tolerations[0].operator -> spec.proxy.tolerations[0].operator.
    None when the child's field is not the user's (the operator's own choice)."""
    for child_prefix, source in CHILD_FIELD_SOURCES.get(kind, ()):
        rest = child_field.removeprefix(child_prefix)
        if rest != child_field and (not rest or rest[0] in ".["):
            return source + _MAP_KEY.sub(r".\1", rest)
    return None
