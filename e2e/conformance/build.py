#!/usr/bin/env python3
"""The Gateway API conformance suite and the images its manifests name, built offline.

    python e2e/conformance/build.py [--json]

From the Go module proxy only (no registry, no release download):

  conformance.test   `go test -c` of sigs.k8s.io/gateway-api/conformance at
                     GATEWAY_API_VERSION, in a writable copy of the main module's tree
                     with the conformance module in its conformance/ (its go.mod has
                     `replace sigs.k8s.io/gateway-api => ../`)
  echo-basic         conformance/echo-basic of the same module, static, as a docker-archive
                     named like the manifests' registry.k8s.io/gateway-api/echo-basic:<tag>
                     (every tag the base and test manifests name: one image, aliases)
  coredns            github.com/coredns/coredns at the tag the base manifests name, built
                     as upstream's Makefile does, under registry.k8s.io/coredns/coredns:<tag>

Both images are upstream's layout on distroless nonroot: the binary at /, user
65532:65532, and /coredns keeps upstream's `setcap cap_net_bind_service=+ep` (the base
manifests run it as non-root with only NET_BIND_SERVICE, and it binds :53).

Cached by version (and the Go version) under ~/.cache/roundhouse ($ROUNDHOUSE_CACHE):
modules in gopath/, the source copy in src/, the binary in bin/, the images in images/.
A warm run builds nothing. Prints the suite binary, then one archive per line.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from e2e.images.archive import write_rootfs_archive  # noqa: E402
from e2e.images.build import cache_dir, digest, prune  # noqa: E402

GATEWAY_API_VERSION = "v1.6.3"
GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"
CONFORMANCE_MODULE = f"{GATEWAY_API_MODULE}/conformance"
COREDNS_MODULE = "github.com/coredns/coredns"
ECHO_BASIC_REPO = "registry.k8s.io/gateway-api/echo-basic"
COREDNS_REPO = "registry.k8s.io/coredns/coredns"
NONROOT = "65532:65532"  # distroless's `nonroot`, the USER of both upstream images
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Bump when a recipe below changes what it produces from the same inputs.
SUITE_RECIPE = "conformance-suite/1"
ECHO_RECIPE = "echo-basic/1"
COREDNS_RECIPE = "coredns/2"
CAP_NET_BIND_SERVICE = 10
_IMAGE = re.compile(r"^[ \t-]*image:\s*[\"']?([^\s\"']+)", re.MULTILINE)


def log(message: str) -> None:
    print(f"[conformance-build {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)


class BuildError(RuntimeError):
    """A Go build or module download failed."""


@dataclass(frozen=True)
class Image:
    role: str                # "echo-basic", "coredns"
    name: str                # the name the archive carries
    aliases: tuple[str, ...]  # further names the manifests use for the same image
    archive: Path            # docker-archive tar
    built: bool              # False: taken from the cache


@dataclass(frozen=True)
class Suite:
    binary: Path             # conformance.test
    conformance_dir: Path    # the conformance module (base/manifests.yaml, tests/)
    crds_dir: Path           # config/crd/standard of the main module
    images: tuple[Image, ...]
    unprovided: tuple[str, ...]  # images some manifest names that are not built here


# --------------------------------------------------------------------------- pure helpers


def manifest_images(texts: Iterable[str]) -> set[str]:
    """Every `image:` reference in YAML texts."""
    return {m.group(1) for text in texts for m in _IMAGE.finditer(text)}


def tags_of(images: Iterable[str], repository: str) -> list[str]:
    """The tags under which `repository` is named, sorted."""
    prefix = f"{repository}:"
    return sorted(i.removeprefix(prefix) for i in images if i.startswith(prefix))


def file_capability(*caps: int) -> bytes:
    """The `security.capability` xattr of `setcap cap_a,cap_b=+ep` (VFS_CAP_REVISION_2)."""
    permitted = 0
    for cap in caps:
        permitted |= 1 << cap
    revision_2, effective = 0x02000000, 0x000001
    return struct.pack("<5I", revision_2 | effective, permitted & 0xFFFFFFFF, 0,
                       permitted >> 32, 0)


# --------------------------------------------------------------------------- go


def cache_root() -> Path:
    """~/.cache/roundhouse, or $ROUNDHOUSE_CACHE (as e2e/cluster/build-binaries.sh)."""
    return cache_dir().parent


def go_env(cache: Path) -> dict[str, str]:
    """Static, the local toolchain only, the project's module and build caches."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOFLAGS", "GOWORK")}
    env.update(GOTOOLCHAIN="local", CGO_ENABLED="0", GOWORK="off", GOFLAGS="-buildvcs=false")
    env.setdefault("GOPROXY", "https://proxy.golang.org")
    env["GOPATH"] = os.environ.get("GOPATH") or str(cache / "gopath")
    env["GOCACHE"] = os.environ.get("GOCACHE") or str(cache / "gobuild")
    return env


def _go(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None,
        what: str = "") -> str:
    """Run a go command; a heartbeat every 30 s while it builds something."""
    started = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(30):
            log(f"  ... still building {what} ({time.monotonic() - started:.0f}s)")

    if what:
        threading.Thread(target=heartbeat, daemon=True).start()
    try:
        res = subprocess.run(["go", *argv], cwd=cwd, env=dict(env), capture_output=True,
                             text=True, check=False)
    finally:
        done.set()
    if res.returncode != 0:
        raise BuildError(f"go {' '.join(argv)} failed ({res.returncode}):\n"
                         f"{(res.stderr or res.stdout).strip()[-3000:]}")
    if what:
        log(f"built {what} in {time.monotonic() - started:.0f}s")
    return res.stdout


def go_version(env: Mapping[str, str]) -> str:
    return _go(["env", "GOVERSION"], env).strip()


def download(modules: Sequence[str], env: Mapping[str, str]) -> dict[str, Path]:
    """`go mod download -json mod@version...` into the project's GOPATH: {mod@version: Dir}."""
    with tempfile.TemporaryDirectory(prefix="rh-gomod-") as empty:  # outside any module
        out = _go(["mod", "download", "-json", *modules], env, cwd=Path(empty))
    dirs: dict[str, Path] = {}
    for raw in re.split(r"(?<=\n})\n(?={)", out.strip()):
        info = json.loads(raw)
        if info.get("Error"):
            raise BuildError(f"go mod download {info.get('Path')}: {info['Error']}")
        dirs[f"{info['Path']}@{info['Version']}"] = Path(info["Dir"])
    return dirs


def _make_writable(tree: Path) -> None:
    for root, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            path = Path(root, name)
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
    tree.chmod(tree.stat().st_mode | stat.S_IWUSR)


def source_tree(cache: Path, main: Path, conformance: Path) -> Path:
    """A writable copy of the main module with the conformance module in conformance/."""
    tree = cache / "src" / f"gateway-api-{GATEWAY_API_VERSION}"
    stamp = tree / ".roundhouse-complete"
    if stamp.exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    tree.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(main, tree, symlinks=True)
    _make_writable(tree)
    shutil.copytree(conformance, tree / "conformance", symlinks=True)
    _make_writable(tree / "conformance")
    stamp.write_text(f"{GATEWAY_API_MODULE}@{GATEWAY_API_VERSION} + {CONFORMANCE_MODULE}\n")
    return tree


# --------------------------------------------------------------------------- builds


class Builder:
    def __init__(self) -> None:
        self.cache = cache_root()
        self.cache.mkdir(parents=True, exist_ok=True)
        self.env = go_env(self.cache)
        self.go = go_version(self.env)
        self.images_dir = cache_dir()
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._tree: Path | None = None
        self.main_dir = Path()
        self.conformance_dir = Path()

    def modules(self) -> None:
        dirs = download([f"{GATEWAY_API_MODULE}@{GATEWAY_API_VERSION}",
                         f"{CONFORMANCE_MODULE}@{GATEWAY_API_VERSION}"], self.env)
        self.main_dir = dirs[f"{GATEWAY_API_MODULE}@{GATEWAY_API_VERSION}"]
        self.conformance_dir = dirs[f"{CONFORMANCE_MODULE}@{GATEWAY_API_VERSION}"]

    def tree(self) -> Path:
        if self._tree is None:
            self._tree = source_tree(self.cache, self.main_dir, self.conformance_dir)
        return self._tree

    def suite(self) -> Path:
        key = digest(SUITE_RECIPE, GATEWAY_API_VERSION, self.go)[:12]
        out_dir = self.cache / "bin" / f"gateway-api-conformance-{GATEWAY_API_VERSION}-{key}"
        binary = out_dir / "conformance.test"
        if binary.exists():
            return binary
        out_dir.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "GOFLAGS": "-mod=mod -buildvcs=false"}
        partial = out_dir / "conformance.test.partial"
        log(f"building the conformance suite {CONFORMANCE_MODULE}@{GATEWAY_API_VERSION} "
            f"({self.go})")
        _go(["test", "-c", "-trimpath", "-o", str(partial), "."], env,
            cwd=self.tree() / "conformance", what=f"conformance.test {GATEWAY_API_VERSION}")
        partial.replace(binary)
        for old in out_dir.parent.glob(f"gateway-api-conformance-{GATEWAY_API_VERSION}-*"):
            if old != out_dir:
                shutil.rmtree(old, ignore_errors=True)
        return binary

    def echo_basic(self, tags: Sequence[str]) -> Image:
        names = [f"{ECHO_BASIC_REPO}:{tag}" for tag in tags]
        key = digest(ECHO_RECIPE, GATEWAY_API_VERSION, self.go, *names)[:16]
        archive = self.images_dir / f"gateway-api-echo-basic-{GATEWAY_API_VERSION}-{key}.tar"
        image = Image("echo-basic", names[0], tuple(names[1:]), archive, built=False)
        if archive.exists():
            return image
        with tempfile.TemporaryDirectory(prefix="rh-echo-", dir=self.images_dir) as work:
            root = _nonroot_rootfs(Path(work) / "root")
            env = {**self.env, "GOFLAGS": "-mod=mod -buildvcs=false"}
            _go(["build", "-trimpath", "-ldflags=-buildid= -s -w", "-o", str(root / "echo-basic"),
                 "./echo-basic"], env, cwd=self.tree() / "conformance",
                what=f"echo-basic {GATEWAY_API_VERSION}")
            write_rootfs_archive(root, archive, names[0], {
                "Env": [PATH_ENV], "Entrypoint": ["/echo-basic"], "User": NONROOT,
                "WorkingDir": "/",
            }, comment=f"{CONFORMANCE_MODULE}/echo-basic@{GATEWAY_API_VERSION} "
                       "(docker/Dockerfile.echo-basic on distroless static nonroot)")
        prune(archive, f"gateway-api-echo-basic-{GATEWAY_API_VERSION}-*.tar")
        return Image(image.role, image.name, image.aliases, archive, built=True)

    def coredns(self, tag: str) -> Image:
        name = f"{COREDNS_REPO}:{tag}"
        key = digest(COREDNS_RECIPE, tag, self.go, name)[:16]
        archive = self.images_dir / f"coredns-{tag}-{key}.tar"
        if archive.exists():
            return Image("coredns", name, (), archive, built=False)
        with tempfile.TemporaryDirectory(prefix="rh-coredns-", dir=self.images_dir) as work:
            root = _nonroot_rootfs(Path(work) / "root")
            gobin = Path(work) / "gobin"
            # Upstream's Makefile: CGO_ENABLED=0 go build -ldflags="-s -w -X ...GitCommit=".
            _go(["install", "-trimpath",
                 f"-ldflags=-s -w -X {COREDNS_MODULE}/coremain.GitCommit={tag}",
                 f"{COREDNS_MODULE}@{tag}"], {**self.env, "GOBIN": str(gobin)},
                what=f"coredns {tag}")
            binary = root / "coredns"
            shutil.move(gobin / "coredns", binary)
            binary.chmod(0o755)
            # Upstream's Dockerfile: RUN setcap cap_net_bind_service=+ep /coredns
            os.setxattr(binary, "security.capability", file_capability(CAP_NET_BIND_SERVICE))
            write_rootfs_archive(root, archive, name, {
                "Env": [PATH_ENV], "Entrypoint": ["/coredns"], "User": NONROOT,
                "WorkingDir": "/", "ExposedPorts": {"53/tcp": {}, "53/udp": {}},
            }, comment=f"{COREDNS_MODULE}@{tag} (its Dockerfile: distroless nonroot, "
                       "setcap cap_net_bind_service=+ep /coredns)", file_capabilities=True)
        prune(archive, f"coredns-{tag}-*.tar")
        return Image("coredns", name, (), archive, built=True)


def _nonroot_rootfs(root: Path) -> Path:
    """What distroless static:nonroot gives a static binary: users, groups, /tmp."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
        "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
    (root / "etc" / "group").write_text("root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n")
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    home = root / "home" / "nonroot"
    home.mkdir(parents=True)
    os.chown(home, 65532, 65532)
    return root


def build_all() -> Suite:
    """The suite binary and the images, built or taken from the cache."""
    builder = Builder()
    with (builder.cache / "conformance-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per cache at a time
        builder.modules()
        conformance = builder.conformance_dir
        texts = [(conformance / "base" / "manifests.yaml").read_text()]
        texts += [p.read_text() for p in sorted((conformance / "tests").glob("*.yaml"))]
        named = manifest_images(texts)
        echo_tags = tags_of(named, ECHO_BASIC_REPO)
        base_coredns = tags_of(manifest_images(texts[:1]), COREDNS_REPO)
        if not echo_tags or len(base_coredns) != 1:
            raise BuildError(f"{conformance}: expected echo-basic and one coredns image in the "
                             f"manifests, found {sorted(named)}")
        suite = builder.suite()
        images = (builder.echo_basic(echo_tags), builder.coredns(base_coredns[0]))
    provided = {n for i in images for n in (i.name, *i.aliases)}
    return Suite(binary=suite, conformance_dir=conformance,
                 crds_dir=builder.main_dir / "config" / "crd" / "standard",
                 images=images, unprovided=tuple(sorted(named - provided)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (the coredns image's file capability)")
    started = time.monotonic()
    suite = build_all()
    log(f"suite and images ready in {time.monotonic() - started:.1f}s "
        f"({sum(i.built for i in suite.images)} images built)")
    if suite.unprovided:
        log(f"not built (no GATEWAY-HTTP test uses them): {', '.join(suite.unprovided)}")
    if args.json:
        print(json.dumps({
            "suite": str(suite.binary), "conformance_dir": str(suite.conformance_dir),
            "crds_dir": str(suite.crds_dir), "unprovided": list(suite.unprovided),
            "images": [{"role": i.role, "name": i.name, "aliases": list(i.aliases),
                        "archive": str(i.archive), "built": i.built} for i in suite.images]}))
    else:
        print(suite.binary)
        for image in suite.images:
            print(image.archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
