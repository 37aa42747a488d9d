"""kopf wiring: settings, handler registration, and the operator's main loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from typing import Any
from urllib.parse import urlsplit

import kopf
from aiohttp import web

from roundhouse import API_GROUP

log = logging.getLogger(__name__)


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf logs in with the same client and config as ours (kube.py), wherever the
    synchronous `kubernetes` package happens to be installed too (tests): in-cluster, a 401
    makes kopf call this again, which re-reads the rotated service account token."""
    info: kopf.ConnectionInfo | None = await kopf.login_via_async_client(**kwargs)
    return info


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf builds a diff base (a deep copy of the body) for every event of every watched
    kind, for change handlers; there are none (handlers/reconcile.py). Copying each proxy
    ConfigMap, Pod and EndpointSlice was a sixth of the operator's CPU when 200
    resources took a readiness flip."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # No kopf change handlers are registered (handlers/reconcile.py), so kopf keeps no
    # bookkeeping on the resources; these name where it would, never in status (which has
    # a schema). The finalizer name lets kopf remove the one older versions added.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    # kopf's own log lines are not posted as Events (kopf.event() calls are: status.py
    # decides those). Posted, every create cost two Events ("Handler ... succeeded",
    # "Creation is processed") and every retry one: a third of the writes of 1,000 new
    # resources, and nothing the resource's conditions do not say.
    settings.posting.level = logging.CRITICAL + 1
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    # Back-off after an unexpected error in kopf's per-object worker (kopf >= 1.42 calls
    # this `queueing`; `batching`, its old name, warns on every start): an API server
    # outage of a few seconds is retried every 2 s; what keeps failing, less often.
    settings.queueing.error_delays = [1, 2, 2, 2, 5, 10, 30]
    # Retries of kopf's own requests (watches included) at most 2 s apart, for about a
    # minute as kopf's default does, so a watch is back within 2 s of the API server.
    settings.networking.error_backoffs = [1] + [2] * 30


def run_operator(namespaces: list[str], liveness: str | None,
                 leader_election_namespace: str | None, metrics_port: int) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # kopf's per-object lines at INFO are "Handler '...' succeeded." for every index and
    # event handler of every watch event: 5,600 of 7,200 lines (and 5% of the CPU) in six
    # flips of a Service shared by 200 LoadBalancers. Its warnings and errors stay; what
    # the operator did is logged by roundhouse.* itself.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    import roundhouse.handlers  # registers the handlers
    import roundhouse.leader  # noqa: F401  (imported now, to be frozen with the rest)

    # Everything so far is code and module state, alive for as long as the process: out of
    # the garbage collector's full passes. Those otherwise re-scan ~95,000 such objects
    # every few seconds while many resources change (a 70 ms stop of the event loop with
    # 200 LoadBalancers, seen in the middle of the fan-outs that came in last).
    gc.collect()
    gc.freeze()

    # One event loop for everything: the API client (aiohttp) is bound to the loop it is
    # created in, so the Lease and kopf's handlers share this one.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_operate(namespaces, liveness, leader_election_namespace,
                                                metrics_port))
    finally:
        loop.close()


async def _operate(namespaces: list[str], liveness: str | None,
                   leader_election_namespace: str | None, metrics_port: int) -> int:
    from roundhouse import kube, metrics
    from roundhouse.handlers import stop_reconciling

    api = await kube.client()  # fail early, with the kubeconfig error, before kopf starts
    terminating = asyncio.Event()
    _on_signals(terminating.set)
    # Our own /healthz, not kopf's: a standby, which runs no kopf, must answer the
    # kubelet's liveness probe too, or it is restarted every few minutes.
    health = await _serve_health(liveness) if liveness else None
    metrics.serve(metrics_port)  # before the election: standbys are scraped too
    elector = None
    if leader_election_namespace:
        from roundhouse.leader import LeaderElector

        elector = LeaderElector(leader_election_namespace, api)
    else:
        metrics.set_leader(True)  # the only replica
    try:
        while True:
            if elector is not None and not await _first(elector.wait_for_leadership(),
                                                        terminating):
                break  # SIGTERM while standing by
            if not await _lead(namespaces, elector, terminating):
                break  # stopped by a signal, not by a lost Lease
            # The Lease is lost: nothing kopf scheduled while stopping may write, and the
            # next term starts from a fresh listing. Campaign again in this process: an
            # exit would wait on the kubelet's restart backoff.
            stop_reconciling()
            _on_signals(terminating.set)  # kopf replaced our handlers with its own
    finally:
        if elector is not None:
            await elector.release()
        if health is not None:
            await health.cleanup()
        await kube.close()
    return 0


async def _lead(namespaces: list[str], elector: Any, terminating: asyncio.Event) -> bool:
    """Run kopf until a signal (False) or the loss of the Lease (True)."""
    from roundhouse.handlers import stop_reconciling
    from roundhouse.handlers.resync import RESYNC
    from roundhouse.handlers.state import RECONCILER

    stop_flag = asyncio.get_running_loop().create_future()
    lost = False

    def stop(is_lost: bool) -> None:
        nonlocal lost
        lost = lost or is_lost
        if not stop_flag.done():
            stop_flag.set_result(None)

    def on_lost() -> None:
        stop_reconciling()  # at once: kopf takes a few seconds to stop
        stop(True)

    ready = asyncio.Event()

    async def take_signals_back() -> None:
        # kopf installs its own SIGTERM handler as it starts; stopped that way, it waits
        # 5 s for its stop-flag waiter, which never ends. Ours stops it through the flag.
        await ready.wait()
        _on_signals(terminating.set)

    # Created before kopf starts, so kopf leaves these tasks alone when it stops.
    renewal = (asyncio.create_task(elector.keep_renewing(on_lost), name="lease-renewal")
               if elector is not None else None)
    signalled = asyncio.create_task(terminating.wait(), name="terminating")
    signalled.add_done_callback(lambda _: stop(False))
    rearm = asyncio.create_task(take_signals_back(), name="signals")
    resyncing = asyncio.create_task(RESYNC.run(), name="resync")
    try:
        recalled = await RECONCILER.recall_applied(namespaces)
        log.info("children of %d resources are applied already (their fingerprints)",
                 recalled)
        await kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=True,  # no kopf peering: leader election is ours
            stop_flag=stop_flag,
            ready_flag=ready,
        )
    finally:
        for task in (renewal, signalled, rearm, resyncing):
            if task is not None:
                task.cancel()
    return lost and not terminating.is_set()


async def _first(campaign: Any, terminating: asyncio.Event) -> bool:
    """Await `campaign` unless a signal comes first (False)."""
    task = asyncio.ensure_future(campaign)
    signalled = asyncio.ensure_future(terminating.wait())
    await asyncio.wait({task, signalled}, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, signalled):
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
    return task.done() and not task.cancelled() and not terminating.is_set()


def _on_signals(callback: Any) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, callback)


async def _serve_health(endpoint: str) -> web.AppRunner:
    """200 on `endpoint` (e.g. http://0.0.0.0:8080/healthz) while the event loop runs."""
    url = urlsplit(endpoint)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get(url.path or "/", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, url.hostname or "0.0.0.0", url.port or 8080).start()
    return runner
