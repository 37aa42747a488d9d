"""Thin kopf handlers. Importing this package registers them with kopf."""

from roundhouse.handlers import dependencies, indexes, reconcile, resync
from roundhouse.handlers.state import DEBOUNCER, RECONCILER

__all__ = ["dependencies", "indexes", "reconcile", "resync", "stop_reconciling"]


def stop_reconciling() -> None:
    """Between two terms as leader: no pending re-reconcile or retry may write after the
    Lease is lost, and the next term starts from a fresh listing and fresh caches."""
    DEBOUNCER.stop()
    resync.RESYNC.forget()  # the next term's kopf has indexes of its own
    RECONCILER.forget_all()
    dependencies.reset()
    reconcile.reset()
