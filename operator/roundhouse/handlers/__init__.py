"""Thin kopf handlers. Importing this package registers them with kopf; the Gateway API
controller's only when ROUNDHOUSE_GATEWAY_API is set (`roundhouse run --gateway-api`):
without the Gateway API CRDs installed, kopf would watch kinds that do not exist."""

import os

from roundhouse.handlers import dependencies, indexes, reconcile, resync
from roundhouse.handlers.state import DEBOUNCER, RECONCILER

GATEWAY_API = os.environ.get("ROUNDHOUSE_GATEWAY_API", "") not in ("", "0", "false")
if GATEWAY_API:
    from roundhouse.handlers import gateway

__all__ = ["dependencies", "indexes", "reconcile", "resync", "stop_reconciling"]


def stop_reconciling() -> None:
    """Between two terms as leader: no pending re-reconcile or retry may write after the
    Lease is lost, and the next term starts from a fresh listing and fresh caches."""
    DEBOUNCER.stop()
    resync.RESYNC.forget()  # the next term's kopf has indexes of its own
    RECONCILER.forget_all()
    dependencies.reset()
    reconcile.reset()
    if GATEWAY_API:
        gateway.reset()
