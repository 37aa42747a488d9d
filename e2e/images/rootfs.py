"""Root filesystems of the offline images: a debootstrapped Python base and HAProxy.

No registry is reachable, so the base the Dockerfiles name is made from Debian's
packages (bookworm, minbase), and HAProxy 3.4 (the LTS the chart names) comes from
the private root e2e/cluster/fetch-haproxy-lts.sh unpacks from Debian's package.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from e2e.images.archive import extract_paths

SUITE = "bookworm"
CA_PATHS = ("etc/ssl/", "usr/share/ca-certificates/", "usr/lib/ssl/")
PYTHON_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3",
                   "ca-certificates")
REPO = Path(__file__).resolve().parents[2]
FETCH_HAPROXY = REPO / "e2e" / "cluster" / "fetch-haproxy-lts.sh"

# Nothing in a container reads these; they only make the image bigger.
_SLIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/lintian",
         "usr/share/linda", "usr/share/bug", "usr/share/locale", "var/cache/apt",
         "var/cache/debconf/templates.dat-old", "var/lib/apt/lists", "var/log",
         "usr/share/common-licenses")


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (ROUNDHOUSE_DEBIAN_MIRROR overrides)."""
    if mirror := os.environ.get("ROUNDHOUSE_DEBIAN_MIRROR"):
        return mirror
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        uris: list[str] = re.findall(r"^URIs:\s*(.+)$", path.read_text(), re.MULTILINE)
        for uri in uris:
            for word in uri.split():
                if word.rstrip("/").endswith("/debian"):
                    return word
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        if path.exists():
            found = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian/?)\s", path.read_text(),
                              re.MULTILINE)
            if found:
                return found.group(1)
    return "http://deb.debian.org/debian"


def ensure_tools(*commands: str) -> None:
    """Install the Debian packages of missing commands (buildah, debootstrap)."""
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        log(f"installing Debian packages: {' '.join(missing)}")
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       stdout=subprocess.DEVNULL,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def python_base(dest: Path, deb_cache: Path) -> None:
    """Debian bookworm minbase + Python 3.11 with venv and pip, without docs or caches."""
    ensure_tools("debootstrap")
    deb_cache.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    log(f"debootstrap {SUITE} minbase + {' '.join(PYTHON_PACKAGES)} from {mirror} "
        "(a few minutes)")
    # debootstrap's progress (I: Retrieving ...) goes to stderr: stdout is for the paths.
    subprocess.run(["debootstrap", "--variant=minbase", f"--cache-dir={deb_cache}",
                    f"--include={','.join(PYTHON_PACKAGES)}", SUITE, str(dest), mirror],
                   check=True, stdout=sys.stderr)
    _slim(dest)
    # The builder's resolv.conf and hostname, not the image's: buildah and the kubelet
    # mount their own.
    for name in ("etc/resolv.conf", "etc/hostname"):
        (dest / name).unlink(missing_ok=True)
    # Device nodes come from the runtime (a container gets its own /dev).
    _empty(dest / "dev")


def haproxy_root() -> tuple[str, Path]:
    """(version, private root) of HAProxy 3.4 from fetch-haproxy-lts.sh (cached by it)."""
    out = subprocess.run([str(FETCH_HAPROXY)], check=True, stdout=subprocess.PIPE,
                         text=True).stdout.split()
    binary = Path(out[-1])  # <cache>/haproxy/<version>/bin/haproxy
    return binary.parents[1].name, binary.parents[1] / "root"


def haproxy_image_root(source: Path, dest: Path, base_archive: Path) -> None:
    """HAProxy's unpacked package + its libraries, laid out like a merged-/usr Debian.

    The package's own binary (standard ELF interpreter, not the patchelf'd copy) at
    /usr/local/sbin/haproxy like the official image, so the master re-executes it at
    the same path on reload.
    """
    shutil.copytree(source, dest, symlinks=True)
    _slim(dest)
    for name in ("etc/init.d", "etc/default", "etc/logrotate.d", "etc/rsyslog.d",
                 "usr/lib/systemd", "usr/share/vim", "usr/share/haproxy"):
        _remove(dest / name)
    for link, target in (("lib", "usr/lib"), ("lib64", "usr/lib64"), ("bin", "usr/bin"),
                         ("sbin", "usr/sbin")):
        if not (dest / link).exists():
            (dest / link).symlink_to(target)
    local_sbin = dest / "usr/local/sbin"
    local_sbin.mkdir(parents=True)
    (dest / "usr/sbin/haproxy").rename(local_sbin / "haproxy")
    (dest / "usr/sbin/haproxy").symlink_to("../local/sbin/haproxy")
    # Debian's CA certificates (from the base image), for `verify required ca-file
    # @system-ca` (OpenSSL's default dir /usr/lib/ssl/certs -> /etc/ssl/certs).
    extract_paths(base_archive, dest, CA_PATHS)
    # The loader's cache: libraries found without searching.
    subprocess.run(["ldconfig", "-r", str(dest)], check=True)
    etc = dest / "etc"
    (etc / "passwd").write_text("root:x:0:0:root:/root:/usr/sbin/nologin\n"
                                "haproxy:x:10001:10001:haproxy:/var/lib/haproxy:"
                                "/usr/sbin/nologin\n"
                                "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (etc / "group").write_text("root:x:0:\nhaproxy:x:10001:\nnogroup:x:65534:\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    # Mount points of the Pod spec (the runtime dir, /tmp) and the usual empty dirs.
    for name in ("run", "tmp", "proc", "sys", "dev", "var/lib/haproxy",
                 "usr/local/etc/haproxy"):
        (dest / name).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    var_run = dest / "var/run"
    if not var_run.is_symlink() and not var_run.exists():
        var_run.symlink_to("../run")


def _slim(root: Path) -> None:
    for name in _SLIM:
        _empty(root / name)


def _empty(directory: Path) -> None:
    if not directory.is_dir() or directory.is_symlink():
        return
    for child in directory.iterdir():
        _remove(child)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
