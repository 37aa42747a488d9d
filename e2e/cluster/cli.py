"""Run a detached local control plane for manual work and e2e scripts.

    python e2e/cluster/cli.py up [--no-controllers] [--nodes N] [--real-node]
    python e2e/cluster/cli.py status
    python e2e/cluster/cli.py kubeconfig
    python e2e/cluster/cli.py down

`up` leaves the processes running after it exits and records them in
${XDG_CACHE_HOME:-~/.cache}/roundhouse/cluster/state.json; `down` stops exactly
those processes, removes the work dir and the unreachable routes `up` added.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"

try:
    import cryptography  # noqa: F401
except ImportError:  # run with a bare python: retry with the project's venv
    if VENV_PYTHON.exists() and Path(sys.executable).resolve() != VENV_PYTHON.resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])
    raise

# Import as a package from the repo root, not as loose modules from this directory.
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path.pop(0)
sys.path.insert(0, str(REPO_ROOT))

from e2e.cluster.controlplane import ControlPlane, ControlPlaneError, cache_dir  # noqa: E402
from e2e.cluster.processes import ManagedProcess  # noqa: E402


def state_dir() -> Path:
    return cache_dir() / "cluster"


def state_file() -> Path:
    return state_dir() / "state.json"


def say(message: str) -> None:
    print(f"[roundhouse-cluster] {message}", flush=True)


@contextlib.contextmanager
def state_lock() -> Iterator[None]:
    """Serialise up/down so two shells cannot start or stop the same cluster at once."""
    state_dir().mkdir(parents=True, exist_ok=True)
    with open(state_dir() / "state.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def load_recorded() -> ControlPlane | None:
    try:
        state = json.loads(state_file().read_text())
    except FileNotFoundError:
        return None
    return ControlPlane.from_state(state, log=say)


def print_usage_hint(cp: ControlPlane) -> None:
    kubeconfig = cp.admin_kubeconfig
    print(f"kubeconfig: {kubeconfig}")
    print(f"server:     {cp.server}")
    print("try:")
    print(f"  {cp.binary('kubectl')} --kubeconfig {kubeconfig} get --raw /readyz")
    print(f"  export KUBECONFIG={kubeconfig}")


def stop_recorded(cp: ControlPlane) -> int:
    """Stop a recorded cluster; 0 when nothing it started is left running."""
    node = cp.real_node
    started = [*cp.processes, *(node.processes if node else [])]  # stop() forgets them
    cp.stop()
    state_file().unlink(missing_ok=True)
    leftovers = [p for p in started if p.alive()]
    if node is not None and node.leftovers:
        say(f"the real node left behind: {node.leftovers}")
        return 1
    return 1 if leftovers else 0


def all_processes(cp: ControlPlane) -> list[ManagedProcess]:
    return [*cp.processes, *(cp.real_node.processes if cp.real_node else [])]


def cmd_up(args: argparse.Namespace) -> int:
    with state_lock():
        recorded = load_recorded()
        if recorded is not None:
            dead = [p.name for p in all_processes(recorded) if not p.alive()]
            if not dead:
                say("already up")
                print_usage_hint(recorded)
                return 0
            say(f"recorded cluster is broken ({', '.join(dead)} not running); cleaning it up")
            stop_recorded(recorded)
        cp = ControlPlane(
            controllers=args.controllers,
            nodes=args.nodes,
            log=say,
            detached=True,
            startup_timeout=args.timeout,
            real_node=args.real_node,
        )
        try:
            cp.start()
        except Exception as err:  # start() already stopped whatever it had started
            say(f"FAILED: {type(err).__name__}: {err}")
            return 1
        state_file().write_text(json.dumps(cp.to_state(), indent=2))
        say(
            f"up in {cp.startup_seconds:.1f}s, kube-apiserver {cp.version.get('gitVersion')}; "
            f"state in {state_file()}"
        )
        if cp.real_node is not None:
            say(
                f"real node {cp.real_node.name} ({cp.real_node.address}) Ready in "
                f"{cp.real_node.startup_seconds:.1f}s; kwok nodes tainted NoSchedule"
            )
        print_usage_hint(cp)
        return 0


def cmd_down(args: argparse.Namespace) -> int:
    with state_lock():
        recorded = load_recorded()
        if recorded is None:
            say(f"no cluster recorded in {state_file()}; nothing to do")
            return 0
        if os.environ.get("KEEP_CLUSTER_LOGS") == "1":
            recorded.keep_workdir = True
        rc = stop_recorded(recorded)
        say("down" if rc == 0 else "down, but some processes did not exit")
        return rc


def cmd_status(args: argparse.Namespace) -> int:
    recorded = load_recorded()
    if recorded is None:
        say("down (no cluster recorded)")
        return 1
    dead = [p.name for p in all_processes(recorded) if not p.alive()]
    for proc in all_processes(recorded):
        state = "NOT RUNNING" if proc.name in dead else "running"
        print(f"  {proc.name:<24} pid {proc.pid:<8} {state}  log {proc.log_path}")
    if dead:
        say(f"degraded: {', '.join(dead)} not running; `cli.py up` will replace the cluster")
        return 1
    try:
        ready = recorded.readyz()
        version = recorded.server_version().get("gitVersion")
    except (ControlPlaneError, OSError) as err:
        say(f"unhealthy: {err}")
        return 1
    say(f"up: /readyz {ready}, kube-apiserver {version}, routes {', '.join(recorded.routes)}")
    print_usage_hint(recorded)
    return 0


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    recorded = load_recorded()
    if recorded is None:
        say("down (no cluster recorded)")
        return 1
    print(recorded.admin_kubeconfig)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cli.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a detached cluster (controllers + 3 fake nodes)")
    up.add_argument(
        "--controllers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run controller-manager, scheduler and kwok (default: on)",
    )
    up.add_argument("--nodes", type=int, default=3, help="fake kwok nodes (default: 3)")
    up.add_argument(
        "--real-node",
        action="store_true",
        help="also run a real kubelet node (containerd, kube-proxy; root); see README",
    )
    up.add_argument("--timeout", type=float, default=120.0, help="per-step startup timeout")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the recorded cluster").set_defaults(func=cmd_down)
    sub.add_parser("status", help="show the recorded cluster").set_defaults(func=cmd_status)
    sub.add_parser("kubeconfig", help="print the admin kubeconfig path").set_defaults(
        func=cmd_kubeconfig
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
