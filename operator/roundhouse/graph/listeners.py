"""Listener logic both kinds share. Pure."""

from __future__ import annotations

from roundhouse.graph.types import Problem
from roundhouse.model.loadbalancer import Listener


def https_down(listeners: tuple[Listener, ...], listener: Listener, https: Listener | None,
               https_up: bool, problems: list[Problem]) -> str | None:
    """The 503 text for a listener that redirects to an HTTPS listener that is down (its
    certificate is missing), with a problem that says so; None otherwise."""
    if not listener.redirect_to_https or https is None or https_up:
        return None
    index = listeners.index(listener)
    problems.append(Problem(
        "TLSReady", "RedirectTargetDown",
        f"spec.listeners[{index}].redirectToHTTPS: HTTPS listener {https.name!r} is down "
        f"(no usable certificate), so listener {listener.name!r} answers 503 instead of "
        "redirecting to it"))
    return (f"503 Service Unavailable: HTTPS listener {https.name} is down (no usable "
            f"certificate); listener {listener.name} only redirects to it")
