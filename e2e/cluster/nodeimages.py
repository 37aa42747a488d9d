"""The real node's own images: pause (the sandbox) and a tiny HTTP echo server.

Each is one static Go binary (sources in `node-images/`) in an image built from
scratch with buildah and exported as a docker-archive tar, so containerd can
import it offline. Archives are cached by content under
~/.cache/roundhouse/images/: a rebuild happens only when the Go sources, the Go
version or this recipe change.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCES = Path(__file__).resolve().parent / "node-images"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
ECHO_IMAGE = "roundhouse.test/node-echo:v1"
_RECIPE_VERSION = "1"  # bump when the build steps below change


class ImageBuildError(RuntimeError):
    """An image could not be built."""


@dataclass(frozen=True)
class ImageSpec:
    name: str  # full reference, e.g. registry.k8s.io/pause:3.10
    package: str  # Go package dir under node-images/
    entrypoint: str  # path of the binary inside the image


PAUSE = ImageSpec(PAUSE_IMAGE, "pause", "/pause")
ECHO = ImageSpec(ECHO_IMAGE, "echo", "/echo")


def images_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "roundhouse" / "images"


def _run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if res.returncode != 0:
        raise ImageBuildError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Static, offline, with the Go found on PATH (never a downloaded toolchain).
    env.update(CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod", GOPROXY="off")
    return env


def content_key(spec: ImageSpec) -> str:
    """Hash of everything the archive is made of."""
    digest = hashlib.sha256()
    digest.update(f"{_RECIPE_VERSION}\n{spec}\n".encode())
    digest.update(_run(["go", "version"], env=_go_env()).encode())
    for path in sorted([SOURCES / "go.mod", *(SOURCES / spec.package).glob("*.go")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _archive_name(spec: ImageSpec, key: str) -> str:
    return f"{spec.package}-{key}.tar"


def build_image(spec: ImageSpec) -> Path:
    """Return the cached docker-archive of `spec`, building it first if needed."""
    cache = images_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / _archive_name(spec, content_key(spec))
    with open(cache / f"{spec.package}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sessions never build the same image at once
        if not archive.exists():
            _build(spec, archive)
    return archive


def _build(spec: ImageSpec, archive: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="roundhouse-img-") as tmp:
        work = Path(tmp)
        binary = work / spec.package
        _run(
            ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(binary), f"./{spec.package}"],
            env=_go_env(),
            cwd=SOURCES,
        )
        # A private vfs store: no overlay mounts, nothing left in /var/lib/containers.
        buildah = [
            "buildah",
            "--root",
            str(work / "root"),
            "--runroot",
            str(work / "runroot"),
            "--storage-driver",
            "vfs",
        ]
        env = dict(os.environ, BUILDAH_ISOLATION="chroot")
        container = _run([*buildah, "from", "scratch"], env=env).strip()
        _run(
            [*buildah, "copy", "--chmod", "0755", container, str(binary), spec.entrypoint], env=env
        )
        _run([*buildah, "config", "--entrypoint", f'["{spec.entrypoint}"]', container], env=env)
        _run([*buildah, "commit", "--quiet", container, spec.name], env=env)
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        _run([*buildah, "push", spec.name, f"docker-archive:{partial}:{spec.name}"], env=env)
        _run([*buildah, "rm", container], env=env)
        os.replace(partial, archive)  # readers never see a half-written archive
        shutil.rmtree(work / "root", ignore_errors=True)
