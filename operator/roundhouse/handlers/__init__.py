"""Thin kopf handlers. Importing this package registers them with kopf."""

from roundhouse.handlers import dependencies, indexes, reconcile

__all__ = ["dependencies", "indexes", "reconcile"]
