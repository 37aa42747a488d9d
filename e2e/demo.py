"""Roundhouse end to end on this machine, in one command (needs root).

    .venv/bin/python e2e/demo.py [--once]

Starts a local control plane (etcd, kube-apiserver, controllers, kwok nodes), installs
manifests/install.yaml, runs the operator as its ServiceAccount, creates a 3-replica
sample app whose Pod IPs are owned by network namespaces running tiny HTTP servers,
and an HTTPS LoadBalancer (a certificate the operator issues; HTTP redirected to HTTPS)
whose proxy Pod is stood in for by the real agent + HAProxy. Prints `kubectl get
loadbalancers`, then real curl calls over verified TLS spreading over the backends,
then waits for Ctrl-C (or exits at once with --once). Everything is cleaned up.
"""

from __future__ import annotations

import argparse
import base64
import collections
import shlex
import shutil
import signal
import ssl
import subprocess
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
from kubernetes import client  # noqa: E402
from tests.e2e.conftest import HTTPS_PORT, LISTENER_PORT  # noqa: E402

LISTENERS = [
    {"name": "http", "port": LISTENER_PORT, "protocol": "HTTP", "redirectToHTTPS": True},
    {"name": "https", "port": HTTPS_PORT, "protocol": "HTTPS"},  # no tls: operator-issued
]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _curl(url: str, name: str, port: int, ca: Path, *extra: str) -> tuple[str, str]:
    """(what curl printed, the command as a user would type it): real curl, verified TLS,
    the certificate's name resolved to the local stand-in (loopback only)."""
    cmd = ["curl", "-sS", "--max-time", "5", "--cacert", str(ca),
           "--resolve", f"{name}:{port}:127.0.0.1", *extra, url]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return (done.stdout.strip() or done.stderr.strip()), shlex.join(cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="exit after showing it works")
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="roundhouse-demo-"))
    print("[demo] control plane, operator, sample app (3 Pods, each IP owned by a network "
          "namespace) + HTTPS LoadBalancer web")
    try:
        with local_stack(work, lambda m: print(f"[cluster] {m}"), ready_timeout=90,
                         listeners=LISTENERS) as (cp, api, env):
            assert env.proxy is not None
            print(cp.kubectl("get", "loadbalancers", "-n", env.namespace, "-o", "wide").stdout)
            # The issued certificate's CA, as a client would fetch it.
            secret = client.CoreV1Api(api).read_namespaced_secret("web-lb-tls", env.namespace)
            ca = work / "ca.crt"
            ca.write_bytes(base64.b64decode(secret.data["ca.crt"]))
            name = f"web-lb.{env.namespace}.svc"
            port = env.local_port(HTTPS_PORT)
            url = f"https://{name}:{port}/"
            print(f"[demo] the CA of the issued certificate: kubectl get secret web-lb-tls "
                  f"-n {env.namespace} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d > {ca}")
            if shutil.which("curl"):
                for _ in range(3):
                    out, cmd = _curl(url, name, port, ca)
                    print(f"$ {cmd}\n{out}")
                out, cmd = _curl(f"http://{name}:{env.port}/path?q=1", name, env.port, ca,
                                 "-o", "/dev/null", "-w", "%{http_code} -> %{redirect_url}")
                print(f"$ {cmd}\n{out}")
            tls = ssl.create_default_context(cafile=str(ca))
            counts: collections.Counter[str] = collections.Counter()
            for _ in range(args.requests):
                r = traffic.get(port, tls=tls, server_hostname=name)
                counts[r.backend or f"<{r.error}>"] += 1
            print(f"[demo] {args.requests} requests to {url} (TLS verified against {ca.name}):")
            for backend, n in sorted(counts.items()):
                print(f"    {backend:40} {n}")
            print(f"[demo] HAProxy master/workers: {env.proxy.show_proc()[:2]}; "
                  f"namespace {env.namespace}; kubeconfig {cp.admin_kubeconfig}")
            if not args.once:
                print(f"[demo] try: curl --cacert {ca} --resolve {name}:{port}:127.0.0.1 "
                      f"{url}   (Ctrl-C to stop)")
                while True:
                    time.sleep(3600)
            failed = sum(n for b, n in counts.items() if b.startswith("<"))
            return 1 if failed or len(counts) < 3 else 0
    except KeyboardInterrupt:
        print("\n[demo] stopping")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
