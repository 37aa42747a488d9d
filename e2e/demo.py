"""Roundhouse end to end on this machine, in one command (needs root).

    .venv/bin/python e2e/demo.py [--once]

Starts a local control plane (etcd, kube-apiserver, controllers, kwok nodes), installs
manifests/install.yaml, runs the operator as its ServiceAccount, creates a 3-replica
sample app whose Pod IPs are owned by network namespaces running tiny HTTP servers,
and an HTTP LoadBalancer whose proxy Pod is stood in for by the real agent + HAProxy.
Prints `kubectl get loadbalancers` and how a few requests spread, then waits for
Ctrl-C (or exits at once with --once). Everything is cleaned up on the way out.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from e2e.harness import traffic  # noqa: E402
from e2e.harness.stack import local_stack  # noqa: E402


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="exit after showing it works")
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="roundhouse-demo-"))
    print("[demo] control plane, operator, sample app (3 Pods, each IP owned by a network "
          "namespace) + LoadBalancer web")
    try:
        with local_stack(work, lambda m: print(f"[cluster] {m}"), ready_timeout=90) as (
                cp, _, env):
            assert env.proxy is not None
            print(cp.kubectl("get", "loadbalancers", "-n", env.namespace, "-o", "wide").stdout)
            counts: collections.Counter[str] = collections.Counter()
            for _ in range(args.requests):
                r = traffic.get(env.port)
                counts[r.backend or f"<{r.error}>"] += 1
            print(f"[demo] {args.requests} requests to http://127.0.0.1:{env.port}/:")
            for backend, n in sorted(counts.items()):
                print(f"    {backend:40} {n}")
            print(f"[demo] HAProxy master/workers: {env.proxy.show_proc()[:2]}; "
                  f"namespace {env.namespace}; kubeconfig {cp.admin_kubeconfig}")
            if not args.once:
                print(f"[demo] try: curl -s http://127.0.0.1:{env.port}/   (Ctrl-C to stop)")
                while True:
                    time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        print("\n[demo] stopping")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
