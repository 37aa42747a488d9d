"""Thin kopf handlers. Importing this package registers them with kopf."""

from roundhouse.handlers import dependencies, indexes, reconcile
from roundhouse.handlers.state import DEBOUNCER, RECONCILER

__all__ = ["dependencies", "indexes", "reconcile", "stop_reconciling"]


def stop_reconciling() -> None:
    """Between two terms as leader: no pending re-reconcile or retry may write after the
    Lease is lost, and the next term starts from a fresh listing and fresh caches."""
    DEBOUNCER.stop()
    RECONCILER.forget_all()
    dependencies.reset()
