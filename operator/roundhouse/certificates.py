"""Operator-issued certificates: decide (tls.py, pure) then write (apply.py).

Per resource: a CA Secret `<child>-ca` (kubernetes.io/tls, the CA itself) and the
serving Secret `<child>-tls` signed by it, renewed 30 days before expiry or when
the names change. The CA outlives renewals, so clients keep trusting it.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import kopf

from roundhouse import apply, kube, tls
from roundhouse.graph.names import issued_ca_name, issued_secret_name
from roundhouse.model.cluster import TLSSecret, parse_tls_secret
from roundhouse.render import objects

log = logging.getLogger(__name__)
# name -> (parsed secret, public PEMs by key) from the secrets index
Lookup = Callable[[str], tuple[TLSSecret, dict[str, str]] | None]


def issued_name(owner: objects.Owner) -> str:
    return issued_secret_name(owner.kind, owner.name)


def ca_name(owner: objects.Owner) -> str:
    return issued_ca_name(owner.kind, owner.name)


async def ensure_issued(owner: objects.Owner, names: tuple[str, ...], lookup: Lookup,
                        body: Any, now: dt.datetime | None = None) -> dict[str, TLSSecret]:
    """Issue or renew when due. Returns the Secrets written now (the index lags behind).

    `names`: the DNS names the serving certificate covers; empty when nothing needs one.
    """
    if not names:
        return {}
    now = now or dt.datetime.now(dt.UTC)
    ca_entry = lookup(ca_name(owner))
    serving = lookup(issued_name(owner))
    ca: tls.KeyPair | None = None
    if ca_entry is None or "tls.crt" not in ca_entry[1]:
        reason = "no CA yet"
        ca = tls.issue_ca(f"roundhouse {owner.namespace}/{owner.name}", now)
        await apply.apply_object(objects.tls_secret(owner, ca_name(owner), ca.cert_pem,
                                                     ca.key_pem, ca.cert_pem,
                                                     f"{ca.not_after:%Y-%m-%d}"))
    else:
        current = tls.KeyPair(serving[1]["tls.crt"], "") if serving and serving[1].get(
            "tls.crt") else None
        maybe = tls.renewal_reason(current, tls.KeyPair(ca_entry[1]["tls.crt"], ""), names, now)
        if maybe is None:
            return {}
        reason = maybe
        ca = await _read_ca(owner)
    pair = tls.issue_serving(ca, names, now)
    secret = objects.tls_secret(owner, issued_name(owner), pair.cert_pem, pair.key_pem,
                                ca.cert_pem, f"{pair.not_after:%Y-%m-%d}")
    await apply.apply_object(secret)
    message = (f"issued certificate {issued_name(owner)!r} for {', '.join(names)} "
               f"(valid until {pair.not_after:%Y-%m-%d}): {reason}")
    log.info("%s %s/%s: %s", owner.kind, owner.namespace, owner.name, message)
    kopf.event(dict(body), type="Normal", reason="CertificateIssued", message=message)
    return {issued_name(owner): parse_tls_secret(secret)}


async def _read_ca(owner: objects.Owner) -> tls.KeyPair:
    raw = await kube.request("GET", kube.object_path("Secret", owner.namespace, ca_name(owner)))
    data = raw.get("data") or {}
    return tls.KeyPair(base64.b64decode(data["tls.crt"]).decode(),
                       base64.b64decode(data["tls.key"]).decode())
