"""Kubernetes side of the agent: watch our ConfigMap, read our Secrets, report status.

Only what the agent's Role allows: list/watch of one ConfigMap by name (a
fieldSelector on metadata.name), get of the Secrets named in servers.json (serving
certificates: tls.crt + tls.key; kind "ca": the ca.crt that verifies upstream servers), and
a merge patch of `data.<pod name>` in the status ConfigMap.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

from roundhouse.agent.agent import AgentStatus, DesiredState
from roundhouse.agent.files import check_cert_file_name, pem_bundle
from roundhouse.render import payload

log = logging.getLogger(__name__)

T = TypeVar("T")
REQUEST_TIMEOUT = 30  # seconds, for everything but the watch
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
CONFIG_KEY = "haproxy.cfg"
SERVERS_KEY = "servers.json"


class SourceError(Exception):
    """The desired state cannot be assembled (yet): reported, nothing is applied."""


class Gone(Exception):
    """HTTP 410: the resourceVersion we watch from is too old; list again."""


class NotFound(Exception):
    pass


class KubeAPI(Protocol):
    """The few API calls the agent makes (a fake implements it in tests)."""

    def list_config_map(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        """(the ConfigMap or None, the list's resourceVersion)."""
        ...

    def watch_config_map(self, namespace: str, name: str, resource_version: str,
                         timeout_seconds: int) -> Iterator[dict[str, Any]]:
        """Raw watch events {"type", "object"}; raises Gone on 410."""
        ...

    def read_secret(self, namespace: str, name: str) -> dict[str, Any]:
        """Raises NotFound."""
        ...

    def patch_config_map_data(self, namespace: str, name: str, data: dict[str, str]) -> None:
        """Merge-patch `data`; raises NotFound."""
        ...


def secret_fingerprint(crt: bytes, key: bytes) -> str:
    """Same digest as the operator's (model.cluster.parse_tls_secret)."""
    return hashlib.sha256(crt + b"\0" + key).hexdigest()[:32]


def ca_fingerprint(ca: bytes) -> str:
    """Same digest as the operator's (model.cluster.ca_fingerprint)."""
    return hashlib.sha256(b"ca\0" + ca).hexdigest()[:32]


class Source:
    def __init__(self, api: KubeAPI, namespace: str, configmap: str, status_configmap: str | None,
                 pod_name: str, *, resync_seconds: float = 300.0, watch_timeout: int = 60) -> None:
        self.api = api
        self.namespace = namespace
        self.configmap = configmap
        self.status_configmap = status_configmap
        self.pod_name = pod_name
        self.resync_seconds = resync_seconds
        self.watch_timeout = watch_timeout
        self._last_report: dict[str, Any] | None = None

    # -- desired state ---------------------------------------------------------------------

    def desired_from(self, configmap: dict[str, Any]) -> DesiredState:
        try:
            data = payload.decode(configmap)
        except payload.PayloadError as err:
            raise SourceError(f"ConfigMap {self.configmap}: {err}") from err
        config = data.get(CONFIG_KEY)
        servers_text = data.get(SERVERS_KEY)
        if not isinstance(config, str) or not config.strip():
            raise SourceError(f"ConfigMap {self.configmap} has no {CONFIG_KEY}")
        if not isinstance(servers_text, str):
            raise SourceError(f"ConfigMap {self.configmap} has no {SERVERS_KEY}")
        try:
            servers = json.loads(servers_text)
        except ValueError as err:
            raise SourceError(f"ConfigMap {self.configmap}: {SERVERS_KEY} is not JSON: "
                              f"{err}") from err
        if not isinstance(servers, dict):
            raise SourceError(f"ConfigMap {self.configmap}: {SERVERS_KEY} is not an object")
        certs: dict[str, str] = {}
        for entry in servers.get("certificates") or []:
            if not isinstance(entry, dict):
                raise SourceError(f"{SERVERS_KEY}: certificates entry is not an object")
            file, secret = entry.get("file"), entry.get("secret")
            if not isinstance(file, str) or not isinstance(secret, str):
                raise SourceError(f"{SERVERS_KEY}: certificate entry without file or secret")
            try:
                check_cert_file_name(file)
            except ValueError as err:
                raise SourceError(f"{SERVERS_KEY}: {err}") from err
            kind = entry.get("kind", "pair")
            if kind == "ca":
                certs[file] = self._ca(secret, entry.get("fingerprint"))
            elif kind == "pair":
                certs[file] = self._pem(secret, entry.get("fingerprint"))
            else:
                raise SourceError(f"{SERVERS_KEY}: certificate {file}: unknown kind {kind!r}")
        return DesiredState(config, servers, certs, servers_text)

    def _pem(self, secret: str, fingerprint: object) -> str:
        try:
            obj = self.api.read_secret(self.namespace, secret)
        except NotFound as err:
            raise SourceError(f"Secret {secret} not found") from err
        data = obj.get("data") or {}
        try:
            crt = base64.b64decode(data.get("tls.crt") or "", validate=True)
            key = base64.b64decode(data.get("tls.key") or "", validate=True)
        except (binascii.Error, ValueError) as err:
            raise SourceError(f"Secret {secret}: tls.crt or tls.key is not base64") from err
        if b"BEGIN CERTIFICATE" not in crt or b"PRIVATE KEY" not in key:
            raise SourceError(f"Secret {secret} has no usable tls.crt and tls.key")
        if fingerprint and secret_fingerprint(crt, key) != fingerprint:
            # Rotated after the operator rendered: it will re-render; the newer one is right.
            log.info("Secret %s changed since the configuration was rendered; using its "
                     "current content", secret)
        return pem_bundle(crt, key)

    def _ca(self, secret: str, fingerprint: object) -> str:
        """The ca.crt of a Secret (any type): CA certificates, no key."""
        try:
            obj = self.api.read_secret(self.namespace, secret)
        except NotFound as err:
            raise SourceError(f"Secret {secret} not found") from err
        try:
            ca = base64.b64decode((obj.get("data") or {}).get("ca.crt") or "", validate=True)
        except (binascii.Error, ValueError) as err:
            raise SourceError(f"Secret {secret}: ca.crt is not base64") from err
        if b"BEGIN CERTIFICATE" not in ca or b"PRIVATE KEY" in ca:
            raise SourceError(f"Secret {secret} has no usable ca.crt")
        if fingerprint and ca_fingerprint(ca) != fingerprint:
            log.info("Secret %s changed since the configuration was rendered; using its "
                     "current ca.crt", secret)
        return ca.decode().strip() + "\n"

    def fetch(self) -> DesiredState:
        """One-shot (the init container): the ConfigMap and its Secrets, now."""
        configmap, _ = self.api.list_config_map(self.namespace, self.configmap)
        if configmap is None:
            raise SourceError(f"ConfigMap {self.namespace}/{self.configmap} not found")
        return self.desired_from(configmap)

    def changes(self, stop: threading.Event) -> Iterator[dict[str, Any]]:
        """Yield the ConfigMap on every change, and again every resync period.

        list, then watch from the list's resourceVersion; 410 Gone or an error means
        list again (with backoff on errors). Deletion yields nothing: keep serving.
        """
        delay = 0.5
        while not stop.is_set():
            try:
                configmap, version = self.api.list_config_map(self.namespace, self.configmap)
                delay = 0.5
                if configmap is None:
                    log.warning("ConfigMap %s/%s not found; waiting for it", self.namespace,
                                self.configmap)
                else:
                    yield configmap
                resync_at = time.monotonic() + self.resync_seconds
                while not stop.is_set() and time.monotonic() < resync_at:
                    timeout = max(1, min(self.watch_timeout,
                                         int(resync_at - time.monotonic()) + 1))
                    for event in self.api.watch_config_map(self.namespace, self.configmap,
                                                           version, timeout):
                        kind, obj = event.get("type"), event.get("object") or {}
                        meta = obj.get("metadata") or {}
                        version = str(meta.get("resourceVersion") or version)
                        if kind in ("ADDED", "MODIFIED") and meta.get("name") == self.configmap:
                            yield obj
                        elif kind == "DELETED":
                            log.warning("ConfigMap %s deleted; keeping the running "
                                        "configuration", self.configmap)
                        if stop.is_set():
                            return
            except Gone:
                log.info("watch of ConfigMap %s expired (410): listing again", self.configmap)
            except Exception as err:  # the API server may be away for a while: keep trying
                log.warning("ConfigMap %s: %s; retrying in %.1fs", self.configmap,
                            _describe(err), delay)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)

    # -- status ----------------------------------------------------------------------------

    def report(self, status: AgentStatus, *, force: bool = False) -> bool:
        """Patch `data.<pod>` in the status ConfigMap; skipped when only the time changed."""
        if not self.status_configmap:
            return False
        body = status.to_dict()
        unchanged = {k: v for k, v in body.items() if k != "time"}
        if not force and self._last_report == unchanged:
            return False
        try:
            self.api.patch_config_map_data(self.namespace, self.status_configmap,
                                           {self.pod_name: json.dumps(body, sort_keys=True)})
        except Exception as err:
            log.warning("cannot report status to ConfigMap %s: %s", self.status_configmap,
                        _describe(err))
            return False
        self._last_report = unchanged
        return True


def _describe(err: BaseException) -> str:
    status = getattr(err, "status", None)
    reason = getattr(err, "reason", None)
    if status is not None:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(err).__name__}: {err}"


class APIError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int | None, reason: str | None) -> None:
        super().__init__(f"HTTP {status} {reason or ''}".strip())
        self.status = status
        self.reason = reason


class KubernetesAPI:
    """KubeAPI over kubernetes_asyncio (raw JSON: no model deserialization).

    The agent's loop is threaded; its API calls run on one event loop of their own, in a
    daemon thread, and the sync methods wait for them.
    """

    def __init__(self, kubeconfig: str | None = None, *,
                 configuration: Any = None, service_account: str = SERVICE_ACCOUNT) -> None:
        """`configuration`: a kubernetes_asyncio Configuration to use as is; else the
        kubeconfig file when given, else the in-cluster config from `service_account`."""
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="kube-api", daemon=True).start()
        self._api = self._run(_api_client(kubeconfig, configuration, service_account))

    def close(self) -> None:
        """Close the connections (else aiohttp warns of an unclosed session at exit)."""
        self._run(self._api.close())
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    async def _call(self, method: str, path: str, query: list[tuple[str, Any]],
                    body: Any = None, content_type: str = "application/json") -> Any:
        response = await self._api.call_api(
            path, method, query_params=query, body=body,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            auth_settings=["BearerToken"], _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT)
        async with response:
            data = await response.read()
            if response.status == 404:
                raise NotFound(path)
            if not 200 <= response.status < 300:
                raise APIError(response.status, response.reason)
        return json.loads(data) if data else {}

    def list_config_map(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        body = self._run(self._call("GET", f"/api/v1/namespaces/{namespace}/configmaps",
                                    [("fieldSelector", f"metadata.name={name}")]))
        items = body.get("items") or []
        return (items[0] if items else None,
                str((body.get("metadata") or {}).get("resourceVersion") or ""))

    def watch_config_map(self, namespace: str, name: str, resource_version: str,
                         timeout_seconds: int) -> Iterator[dict[str, Any]]:
        events = self._watch(namespace, name, resource_version, timeout_seconds)
        try:
            while True:
                try:
                    yield self._run(anext(events))
                except StopAsyncIteration:
                    return
        finally:
            self._run(events.aclose())

    async def _watch(self, namespace: str, name: str, resource_version: str,
                     timeout_seconds: int) -> AsyncGenerator[dict[str, Any], None]:
        response = await self._api.call_api(
            f"/api/v1/namespaces/{namespace}/configmaps", "GET",
            query_params=[("fieldSelector", f"metadata.name={name}"), ("watch", "true"),
                          ("allowWatchBookmarks", "true"),
                          ("resourceVersion", resource_version),
                          ("timeoutSeconds", str(timeout_seconds))],
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
            _preload_content=False, _request_timeout=(10, timeout_seconds + 10))
        async with response:
            if response.status == 410:
                raise Gone()
            if not 200 <= response.status < 300:
                raise APIError(response.status, response.reason)
            pending = b""
            # chunks, not readline(): one event carries a whole ConfigMap (up to 1 MiB)
            async for chunk in response.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _watch_event(json.loads(line))

    def read_secret(self, namespace: str, name: str) -> dict[str, Any]:
        secret: dict[str, Any] = self._run(
            self._call("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}", []))
        return secret

    def patch_config_map_data(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self._run(self._call("PATCH", f"/api/v1/namespaces/{namespace}/configmaps/{name}", [],
                             {"data": data}, "application/merge-patch+json"))


def _watch_event(event: dict[str, Any]) -> dict[str, Any]:
    if event.get("type") == "ERROR":
        obj = event.get("object") or {}
        if obj.get("code") == 410:
            raise Gone()
        raise APIError(obj.get("code"), obj.get("message"))
    return event


async def _api_client(kubeconfig: str | None, configuration: Any,
                      service_account: str) -> Any:
    """Created on the API loop (aiohttp binds its session to it). In-cluster, the token
    file is re-read every minute: bound service account tokens rotate."""
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

    if configuration is None:
        configuration = client.Configuration()
        if kubeconfig:
            await config.load_kube_config(config_file=kubeconfig,
                                          client_configuration=configuration)
        else:
            InClusterConfigLoader(token_filename=f"{service_account}/token",
                                  cert_filename=f"{service_account}/ca.crt",
                                  try_refresh_token=True).load_and_set(configuration)
    return client.ApiClient(configuration)
