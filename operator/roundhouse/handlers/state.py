"""Process-wide handler state: one Reconciler and one Debouncer per operator process."""

from __future__ import annotations

import os

from roundhouse.handlers.trigger import Debouncer
from roundhouse.reconciler import Reconciler
from roundhouse.render.objects import ProxyImages

RECONCILER = Reconciler(images=ProxyImages(
    haproxy=os.environ.get("ROUNDHOUSE_HAPROXY_IMAGE", ProxyImages.haproxy),
    agent=os.environ.get("ROUNDHOUSE_AGENT_IMAGE", ProxyImages.agent),
))
DEBOUNCER = Debouncer()
