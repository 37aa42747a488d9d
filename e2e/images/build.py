#!/usr/bin/env python3
"""Build every container image the real-Pods tier needs, offline, as docker-archive tars.

    python e2e/images/build.py [--tag TAG]

Prints one archive path per line, last (operator, haproxy, echo); each one imported with
`ctr -n k8s.io images import <tar>` registers the exact name its consumer uses:

  docker.io/library/roundhouse:<tag>       the unchanged Dockerfile (operator + agent)
  docker.io/library/haproxy:3.4            the chart's proxy.haproxyImage, HAProxy 3.4
  docker.io/library/roundhouse-echo:<tag>  the unchanged e2e/kind/echo/Dockerfile

Both Dockerfiles start FROM python:3.11.14-slim-bookworm, made here with debootstrap.
Everything is cached by the hash of its inputs under ~/.cache/roundhouse/images/ (or
$ROUNDHOUSE_CACHE/images): a run with nothing changed builds nothing. <tag> defaults to
a hash of the image's inputs. Needs root (debootstrap, buildah); installs both if missing.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from e2e.images import rootfs  # noqa: E402
from e2e.images.archive import write_rootfs_archive  # noqa: E402
from e2e.images.rootfs import log  # noqa: E402
from e2e.images.store import buildah_storage  # noqa: E402

PYTHON_BASE = "docker.io/library/python:3.11.14-slim-bookworm"
HAPROXY = "docker.io/library/haproxy:3.4"
SERIES = HAPROXY.rsplit(":", 1)[1]  # the LTS branch of the chart's image
OPERATOR_REPO = "docker.io/library/roundhouse"
ECHO_REPO = "docker.io/library/roundhouse-echo"
ECHO_CONTEXT = REPO / "e2e" / "kind" / "echo"
# Bump when a recipe below changes what it produces from the same inputs.
BASE_RECIPE = "python-base/1"
HAPROXY_RECIPE = "haproxy/1"
BUILD_RECIPE = "bud/2"
# The files the Dockerfile's build reads (its .dockerignore lets in only these).
OPERATOR_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "LICENSE")
_IGNORED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis",
                  "build", "dist"}
# The host CA bundle: pip in the build goes through a TLS-intercepting proxy here.
HOST_CA = Path(os.environ.get("ROUNDHOUSE_BUILD_CA", "/etc/ssl/certs/ca-certificates.crt"))
# Where the base image keeps its bundle (ca-certificates): the build sees the host's.
BASE_CA = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class BuiltImage:
    role: str      # "operator", "haproxy", "echo"
    name: str      # fully qualified repo:tag, as `ctr images ls` shows it after import
    archive: Path  # docker-archive tar
    built: bool    # False: taken from the cache


def cache_dir() -> Path:
    base = os.environ.get("ROUNDHOUSE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "roundhouse")
    return Path(base) / "images"


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def files_digest(root: Path, paths: Iterable[Path]) -> str:
    """Hash of the files' relative paths, modes and contents (not their times)."""
    parts: list[str | bytes] = []
    for path in sorted(paths):
        parts += [str(path.relative_to(root)), oct(path.stat().st_mode & 0o111),
                  path.read_bytes()]
    return digest(*parts)


def _tree(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*")
            if p.is_file() and not _IGNORED_PARTS.intersection(p.relative_to(directory).parts)
            and not p.name.endswith((".pyc", ".pyo"))
            and not any(part.endswith(".egg-info") for part in p.parts)]


def operator_inputs() -> list[Path]:
    present = [REPO / name for name in OPERATOR_INPUTS if (REPO / name).exists()]
    return present + _tree(REPO / "operator")


class Builder:
    def __init__(self, tag: str | None) -> None:
        self.tag = tag
        self.cache = cache_dir()
        self.cache.mkdir(parents=True, exist_ok=True)
        self.base_key = digest(BASE_RECIPE, rootfs.SUITE, *rootfs.PYTHON_PACKAGES,
                               rootfs.debian_mirror())[:16]

    def base(self) -> Path:
        archive = self.cache / f"python-base-{self.base_key}.tar"
        if archive.exists():
            return archive
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="rootfs-", dir=self.cache) as work:
            root = Path(work) / "root"
            rootfs.python_base(root, self.cache / "debs")
            log("writing the base image")
            write_rootfs_archive(root, archive, PYTHON_BASE, {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "LANG=C.UTF-8"],
                "Cmd": ["python3"],
            }, comment=f"debootstrap {rootfs.SUITE} minbase + "
                       f"{' '.join(rootfs.PYTHON_PACKAGES)}")
        prune(archive, "python-base-*.tar")
        log(f"{PYTHON_BASE}: built in {time.monotonic() - started:.0f}s")
        return archive

    def haproxy(self) -> BuiltImage:
        version, source = rootfs.haproxy_root()
        key = digest(HAPROXY_RECIPE, version, HAPROXY, self.base_key)[:16]
        archive = self.cache / f"haproxy-{SERIES}-{key}.tar"
        if archive.exists():
            return BuiltImage("haproxy", HAPROXY, archive, built=False)
        base = self.base()
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="rootfs-", dir=self.cache) as work:
            root = Path(work) / "root"
            rootfs.haproxy_image_root(source, root, base)
            # Like the official image for a Pod's `args: [-W, ...]`: they go to haproxy, and
            # SIGUSR1 stops it softly (in-flight requests finish), as the official image does.
            write_rootfs_archive(root, archive, HAPROXY, {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Entrypoint": ["haproxy"],
                "Cmd": ["-f", "/usr/local/etc/haproxy/haproxy.cfg"],
                "User": "10001:10001",
                "WorkingDir": "/var/lib/haproxy",
                "StopSignal": "SIGUSR1",
            }, comment=f"HAProxy {version} from Debian's package (fetch-haproxy-lts.sh)")
        prune(archive, f"haproxy-{SERIES}-*.tar")
        log(f"{HAPROXY}: HAProxy {version}, built in {time.monotonic() - started:.0f}s")
        return BuiltImage("haproxy", HAPROXY, archive, built=True)

    def operator(self) -> BuiltImage:
        content = digest(BUILD_RECIPE, self.base_key, files_digest(REPO, operator_inputs()))
        return self._bud("operator", OPERATOR_REPO, content, REPO, REPO / "Dockerfile")

    def echo(self) -> BuiltImage:
        content = digest(BUILD_RECIPE, self.base_key,
                         files_digest(ECHO_CONTEXT, _tree(ECHO_CONTEXT)))
        return self._bud("echo", ECHO_REPO, content, ECHO_CONTEXT, None)

    def _bud(self, role: str, repo: str, content: str, context: Path,
             dockerfile: Path | None) -> BuiltImage:
        tag = self.tag or content[:12]
        name = f"{repo}:{tag}"
        key = digest(content, name)[:16]
        short = repo.rsplit("/", 1)[-1]
        archive = self.cache / f"{short}-{tag}-{key}.tar"
        if archive.exists():
            return BuiltImage(role, name, archive, built=False)
        base = self.base()
        rootfs.ensure_tools("buildah")
        started = time.monotonic()
        log(f"{name}: buildah bud {context.relative_to(REPO) or '.'}")
        with buildah_storage(self.cache / "work") as buildah:
            buildah.load(base, PYTHON_BASE)
            log(f"{name}: base loaded after {time.monotonic() - started:.0f}s")
            # pip reaches PyPI through this machine's TLS proxy: the build sees the host's
            # CA bundle in place of the base's (a mount, so the image never keeps it).
            buildah.bud(context, name, dockerfile,
                        volumes=(f"{HOST_CA}:{BASE_CA}:ro",) if HOST_CA.exists() else ())
            buildah.save(name, archive)
            log(f"{name}: archive written after {time.monotonic() - started:.0f}s")
        # A hash tag is replaced by the next one; a chosen tag only by itself.
        prune(archive, f"{short}-{'[0-9a-f]' * 12 if self.tag is None else tag}-*.tar")
        log(f"{name}: built in {time.monotonic() - started:.0f}s")
        return BuiltImage(role, name, archive, built=True)


def prune(keep: Path, pattern: str) -> None:
    """Drop the older archives one image replaces (same name, other inputs)."""
    for old in keep.parent.glob(pattern):
        if old != keep and old.suffix == ".tar":
            old.unlink()


def build_all(tag: str | None = None) -> list[BuiltImage]:
    """The operator, haproxy and echo images, built or taken from the cache."""
    builder = Builder(tag)
    # One build at a time per cache: two runs would write the same partial files.
    with (builder.cache / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return [builder.operator(), builder.haproxy(), builder.echo()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", help="tag of roundhouse and roundhouse-echo "
                                      "(default: a hash of each image's inputs)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per image instead of the paths")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (debootstrap, buildah's chroot builds)")
    for tool in ("tar", "dpkg-deb"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is needed (a Debian machine)")
    started = time.monotonic()
    images = build_all(args.tag)
    log(f"{sum(i.built for i in images)} built, {sum(not i.built for i in images)} cached, "
        f"{time.monotonic() - started:.1f}s")
    for image in images:
        if args.json:
            print(json.dumps({"role": image.role, "name": image.name,
                              "archive": str(image.archive), "built": image.built}))
        else:
            print(image.archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
