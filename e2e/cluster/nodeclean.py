"""Forceful cleanup after the real node, and the check that nothing was left behind.

Teardown does not rely on the kubelet to drain: it kills whatever runs in the
node's cgroups, unmounts everything under the node's work dir, removes the
cgroup dirs and every KUBE-* iptables chain. `find_leftovers` then lists
anything still there (processes, mounts, iptables rules, routes, links,
cgroups, CNI cache files, changed sysctls); tests assert it is empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import nodenet

CGROUP_FS = Path("/sys/fs/cgroup")
CNI_CACHE = Path("/var/lib/cni")  # libcni's result cache; not configurable in containerd 1.6
SHIM_SOCKETS = Path("/run/containerd/s")  # containerd 1.6 shims always put sockets here
CONTAINER_LOG_LINKS = Path("/var/log/containers")  # the kubelet's symlinks, always here
# Host paths the kubelet, containerd's shims and libcni create whatever the config says
# (device plugin socket, shim sockets, CNI cache, log links): removed at teardown unless
# they existed before the node started.
HOST_PATHS = (
    CNI_CACHE,
    SHIM_SOCKETS.parent,
    CONTAINER_LOG_LINKS,
    Path("/var/lib/kubelet"),
    Path("/usr/libexec/kubernetes"),  # the default volumePluginDir
)
KUBE_CHAIN_PREFIX = "KUBE-"
_BUILTIN_CHAINS = {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def _unescape_mount_path(raw: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        raw = raw.replace(code, char)
    return raw


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory`, deepest first."""
    prefix = str(directory).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape_mount_path(line.split()[4])
        if point.startswith(prefix) or point == str(directory):
            points.append(point)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


def unmount_all(directory: Path) -> None:
    for _ in range(5):  # a lazy unmount can reveal mounts stacked underneath
        points = mounts_under(directory)
        if not points:
            return
        for point in points:
            if _run(["umount", point]).returncode != 0:
                _run(["umount", "-l", point])


# --------------------------------------------------------------------------- cgroups


def cgroup_dirs(cgroup_root: str) -> list[Path]:
    """The node's cgroup root in every mounted v1 hierarchy that has it."""
    if not CGROUP_FS.is_dir():
        return []
    name = cgroup_root.strip("/")
    return [h / name for h in sorted(CGROUP_FS.iterdir()) if (h / name).is_dir()]


def create_cgroup_root(cgroup_root: str) -> None:
    name = cgroup_root.strip("/")
    for hierarchy in sorted(CGROUP_FS.iterdir()):
        if (hierarchy / "cgroup.procs").exists():
            (hierarchy / name).mkdir(exist_ok=True)
            # A new v1 cpuset starts with no CPUs or memory nodes: nothing could run in it.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / knob).exists() and not (
                    hierarchy / name / knob
                ).read_text().strip():
                    (hierarchy / name / knob).write_text((hierarchy / knob).read_text())


def pids_in_cgroups(cgroup_root: str) -> set[int]:
    pids: set[int] = set()
    for top in cgroup_dirs(cgroup_root):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def kill_cgroup_processes(cgroup_root: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (pids := pids_in_cgroups(cgroup_root)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def remove_cgroups(cgroup_root: str) -> None:
    for top in cgroup_dirs(cgroup_root):
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, top]:
            for _ in range(20):  # rmdir fails while the kernel still frees a task
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


# --------------------------------------------------------------------------- iptables


def _tables(save: str) -> Iterable[tuple[str, list[str]]]:
    table = ""
    lines: list[str] = []
    for line in save.splitlines():
        if line.startswith("*"):
            table, lines = line[1:], []
        elif line == "COMMIT":
            yield table, lines
        else:
            lines.append(line)


def kube_iptables_lines(command: str) -> list[str]:
    """Lines of `<command>-save` that mention a KUBE-* chain or the node's bridge."""
    res = _run([f"{command}-save"])
    hits = []
    for table, lines in _tables(res.stdout):
        for line in lines:
            if KUBE_CHAIN_PREFIX in line or nodenet.BRIDGE in line:
                hits.append(f"{command} -t {table}: {line}")
    return hits


def flush_kube_chains(command: str) -> None:
    """Remove every jump to a KUBE-* chain from built-in chains, then the chains themselves."""
    res = _run([f"{command}-save"])
    for table, lines in _tables(res.stdout):
        chains = [ln[1:].split()[0] for ln in lines if ln.startswith(":")]
        for line in lines:
            parts = line.split()
            if parts[:1] == ["-A"] and parts[1] in _BUILTIN_CHAINS and KUBE_CHAIN_PREFIX in line:
                _run([command, "-w", "-t", table, "-D", *parts[1:]])
        kube = [c for c in chains if c.startswith(KUBE_CHAIN_PREFIX)]
        for chain in kube:
            _run([command, "-w", "-t", table, "-F", chain])
        for chain in kube:
            _run([command, "-w", "-t", table, "-X", chain])


# --------------------------------------------------------------------------- snapshot


def _link_names() -> set[str]:
    out = _run(["ip", "-o", "link", "show"]).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def _node_link(name: str) -> bool:
    """The bridge, the discard pair, or a Pod's host-side veth (the CNI plugin's "veth…")."""
    return name.startswith("veth") or name in (
        nodenet.BRIDGE,
        nodenet.DISCARD,
        nodenet.DISCARD_PEER,
    )


def _shim_sockets() -> set[str]:
    return {p.name for p in SHIM_SOCKETS.iterdir()} if SHIM_SOCKETS.is_dir() else set()


@dataclass
class HostSnapshot:
    """What the host looked like before the node started, to compare after teardown."""

    sysctls: dict[str, str] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)
    shim_sockets: list[str] = field(default_factory=list)
    existing_paths: list[str] = field(default_factory=lambda: [str(p) for p in HOST_PATHS])

    @classmethod
    def take(cls) -> HostSnapshot:
        return cls(
            nodenet.read_sysctls(),
            sorted(_link_names()),
            sorted(_shim_sockets()),
            [str(p) for p in HOST_PATHS if p.exists()],
        )

    def created(self) -> list[Path]:
        """Host paths that did not exist before the node started."""
        return [p for p in HOST_PATHS if str(p) not in self.existing_paths]

    def to_state(self) -> dict[str, Any]:
        return {
            "sysctls": self.sysctls,
            "links": self.links,
            "shim_sockets": self.shim_sockets,
            "existing_paths": self.existing_paths,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> HostSnapshot:
        return cls(
            dict(state["sysctls"]),
            list(state["links"]),
            list(state["shim_sockets"]),
            list(state["existing_paths"]),
        )


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def pids_referencing(needle: str) -> list[int]:
    """Processes whose command line or cwd names `needle` (e.g. the node's work dir)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        with contextlib.suppress(OSError):
            cwd = ""
            with contextlib.suppress(OSError):
                cwd = os.readlink(f"/proc/{entry}/cwd")
            if needle in _cmdline(int(entry)) or cwd.startswith(needle):
                found.append(int(entry))
    return found


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _describe(pid: int) -> str:
    try:
        return f"pid {pid}: {_cmdline(pid)[:160]}"
    except OSError:
        return f"pid {pid}"


def find_leftovers(
    node_dir: Path, cgroup_root: str, network_name: str, before: HostSnapshot
) -> list[str]:
    """Everything the node left on the host; empty after a clean teardown."""
    left = [f"process {_describe(p)}" for p in pids_referencing(str(node_dir))]
    left += [
        f"process in the node's cgroups: pid {p}" for p in sorted(pids_in_cgroups(cgroup_root))
    ]
    left += [f"mount {m}" for m in mounts_under(node_dir)]
    left += [f"cgroup {d}" for d in cgroup_dirs(cgroup_root)]
    for command in ("iptables", "ip6tables"):
        left += [f"iptables rule {line}" for line in kube_iptables_lines(command)]
    routes = _run(["ip", "route", "show"]).stdout.splitlines()
    left += [
        f"route {r}"
        for r in routes
        if nodenet.BRIDGE in r
        or nodenet.DISCARD in r
        or r.startswith(("10.244.200.", nodenet.SERVICE_CIDR))
    ]
    # Only names the node makes: other test runs may add their own links meanwhile.
    new_links = _link_names() - set(before.links)
    left += [f"link {name}" for name in sorted(new_links) if _node_link(name)]
    left += [
        f"containerd shim socket {s}" for s in sorted(_shim_sockets() - set(before.shim_sockets))
    ]
    if CNI_CACHE.is_dir():
        left += [f"CNI cache {p}" for p in CNI_CACHE.rglob(f"*{network_name}*")]
    left += [f"container log link {p}" for p in _log_links_into(node_dir)]
    left += [f"{p} (created by the node)" for p in before.created() if p.exists()]
    for name, value in before.sysctls.items():
        now = nodenet.read_sysctls().get(name)
        if now != value:
            left.append(f"sysctl {name} = {now} (was {value})")
    if node_dir.exists():
        left.append(f"directory {node_dir}")
    return left


def _log_links_into(node_dir: Path) -> list[Path]:
    if not CONTAINER_LOG_LINKS.is_dir():
        return []
    prefix = str(node_dir) + "/"
    return [
        p
        for p in CONTAINER_LOG_LINKS.iterdir()
        if p.is_symlink() and os.readlink(p).startswith(prefix)
    ]


def remove_host_paths(node_dir: Path, network_name: str, before: HostSnapshot) -> None:
    """Remove what the node created outside its work dir (see HOST_PATHS)."""
    for link in _log_links_into(node_dir):
        link.unlink(missing_ok=True)
    for path in before.created():
        shutil.rmtree(path, ignore_errors=True)
    remove_cni_cache(network_name)


def remove_cni_cache(network_name: str) -> None:
    """Drop libcni's cache files of our network."""
    if not CNI_CACHE.is_dir():
        return
    for path in sorted(CNI_CACHE.rglob(f"*{network_name}*"), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            if path.is_dir():
                for child in path.iterdir():
                    child.unlink()
                path.rmdir()
            else:
                path.unlink()


# --------------------------------------------------------------------------- stale nodes

_NODE_DIR_GLOB = "roundhouse-cp-*/node"
SNAPSHOT_FILE = "host-snapshot.json"  # in the node dir: lets a sweep undo a killed node


def live_node_dirs() -> list[str]:
    """Node dirs some live kubelet or containerd of ours still uses (a real node runs)."""
    live = set()
    for pid in pids_referencing("/roundhouse-cp-"):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            name = Path(argv[0].decode()).name
            if name in ("kubelet", "containerd"):
                for arg in argv:
                    text = arg.decode()
                    if "/node/" in text and "/roundhouse-cp-" in text:
                        live.add(text[: text.index("/node/") + len("/node")].split("=")[-1])
    return sorted(live)


def stale_node_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob(_NODE_DIR_GLOB))


def sweep_stale_node(
    tmp: Path, cgroup_root: str, network_name: str, log: Callable[[str], None]
) -> None:
    """Clean up after a real node whose test run was killed (no live kubelet/containerd).

    Its shims and Pods may still run, its mounts, cgroups, links, routes and
    KUBE-* chains are still there. The sysctls it changed cannot be restored:
    their old values died with the run.
    """
    dirs = stale_node_dirs(tmp)
    log(f"sweeping a killed real node: {', '.join(map(str, dirs)) or '(no work dir left)'}")
    snapshots = []
    for node_dir in dirs:
        with contextlib.suppress(OSError, ValueError, KeyError):
            state = json.loads((node_dir / SNAPSHOT_FILE).read_text())
            snapshots.append(HostSnapshot.from_state(state))
    kill_cgroup_processes(cgroup_root)
    for node_dir in dirs:
        for pid in pids_referencing(str(node_dir)):
            kill_pid(pid)
    time.sleep(0.5)
    for node_dir in dirs:
        unmount_all(node_dir)
        shutil.rmtree(node_dir, ignore_errors=True)
    remove_cgroups(cgroup_root)
    for command in ("iptables", "ip6tables"):
        flush_kube_chains(command)
    nodenet.NodeNetwork().teardown()
    remove_cni_cache(network_name)
    for node_dir, snapshot in zip(dirs, snapshots, strict=False):
        remove_host_paths(node_dir, network_name, snapshot)
        changed = nodenet.restore_sysctls(snapshot.sysctls)
        if changed:
            log(f"restored sysctls (found, restored): {changed}")
