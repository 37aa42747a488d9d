"""The operator's kopf wiring: registering the handlers and running the startup hook use no
API kopf deprecates (kopf turns a deprecated setting into a warning on every start)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

from roundhouse import API_GROUP, API_VERSION

# Runs in a fresh interpreter, so importing roundhouse registers every handler anew
# with warnings turned into errors. Third-party modules are imported before that:
# what they warn about on import is none of the operator's doing.
STARTUP = textwrap.dedent("""
    import json, logging, warnings
    import kopf, kubernetes

    warnings.simplefilter("error")
    import roundhouse.handlers, roundhouse.main

    registry = kopf.get_default_registry()
    hooks = [h for h in registry._activities.get_all_handlers() if h.activity == "startup"]
    settings = kopf.OperatorSettings()
    for hook in hooks:
        hook.fn(settings=settings, logger=logging.getLogger("startup"), memo=kopf.Memo())
    print(json.dumps({
        "hooks": [f"{h.fn.__module__}.{h.fn.__name__}" for h in hooks],
        "error_delays": list(settings.queueing.error_delays),
        "error_backoffs": list(settings.networking.error_backoffs),
        "finalizer": settings.persistence.finalizer,
        "posting_level": settings.posting.level,
        "posting_enabled": settings.posting.enabled,
        "changing": [h.id for h in registry._changing.get_all_handlers()],
        "resources": sorted({f"{h.selector.group}/{h.selector.version}/{h.selector.any_name}"
                             for h in registry._indexing.get_all_handlers()
                             if h.selector.group}),
    }))
""")


def test_startup_hook_runs_without_any_warning_and_sets_the_error_backoff() -> None:
    done = subprocess.run([sys.executable, "-c", STARTUP], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["hooks"] == ["roundhouse.main.configure"]
    assert seen["error_delays"] == [1, 2, 2, 2, 5, 10, 30]
    # kopf's request retries (its watches too) at most 2 s apart, for about a minute: a
    # watch is back within 2 s of the API server, and a 30 s outage is not escalated.
    backoffs = seen["error_backoffs"]
    assert max(backoffs) <= 2 and sum(backoffs) >= 55, backoffs
    assert seen["finalizer"] == f"{API_GROUP}/finalizer"
    # No change handlers: kopf writes no annotation to a resource as it is created,
    # retried or resumed (handlers/reconcile.py reconciles from watch events).
    assert seen["changing"] == []
    # Events only where status.py posts one (kopf.event), not kopf's own log lines.
    assert seen["posting_enabled"] and seen["posting_level"] > 50
    # The indexes of our own kinds follow roundhouse.API_GROUP / API_VERSION.
    assert {r for r in seen["resources"] if r.startswith(API_GROUP)} == {
        f"{API_GROUP}/{API_VERSION}/loadbalancers", f"{API_GROUP}/{API_VERSION}/reverseproxies"}


RUN = textwrap.dedent("""
    import gc, json, logging
    import roundhouse.main as main

    async def no_operator(*args):
        return 0

    main._operate = no_operator
    before = gc.get_freeze_count()
    code = main.run_operator([], None, None, 0)
    print(json.dumps({"code": code, "frozen_before": before,
                      "frozen_after": gc.get_freeze_count(),
                      "kopf_objects": logging.getLogger("kopf.objects").level,
                      "kopf_objects_info": logging.getLogger("kopf.objects").isEnabledFor(
                          logging.INFO)}))
""")


def test_the_operator_freezes_its_module_state_and_drops_kopfs_success_lines() -> None:
    """Before kopf starts: everything imported is frozen out of the garbage collector's
    full passes, and kopf's per-handler "succeeded" lines (INFO) are not logged."""
    out = subprocess.run([sys.executable, "-c", RUN], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["code"] == 0 and result["frozen_before"] == 0
    assert result["frozen_after"] > 10_000  # kopf, the API client and roundhouse
    assert result["kopf_objects"] == logging.WARNING and not result["kopf_objects_info"]
