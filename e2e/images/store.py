"""buildah on a private, throw-away storage (never the machine's /var/lib/containers).

Each build loads the base it needs from its cached archive, builds, and writes the
result as a docker-archive; the storage is removed afterwards, so nothing but the
archives accumulates in the cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Buildah:
    def __init__(self, root: Path) -> None:
        self._root = root
        driver = os.environ.get("ROUNDHOUSE_BUILDAH_DRIVER", "overlay")
        self._global = ["buildah", "--root", str(root / "storage"),
                        "--runroot", str(root / "run"), "--storage-driver", driver]

    def run(self, *args: str) -> str:
        result = subprocess.run([*self._global, *args], text=True, capture_output=True)
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
            result.check_returncode()
        return result.stdout.strip()

    def progress(self, *args: str) -> None:
        """A long step: its output is progress, on stderr (stdout is for the paths)."""
        subprocess.run([*self._global, *args], check=True, stdout=sys.stderr)

    def load(self, archive: Path, name: str) -> None:
        """Put a docker-archive into the storage under `name` (a FROM line's image)."""
        image_id = self.run("pull", "--quiet", f"docker-archive:{archive}")
        self.run("tag", image_id.splitlines()[-1], name)

    def bud(self, context: Path, name: str, dockerfile: Path | None = None,
            volumes: tuple[str, ...] = ()) -> None:
        """The project's Dockerfile, unchanged: no pull, chroot isolation (no runc needed)."""
        # Docker format: it keeps HEALTHCHECK NONE (OCI has no field for it).
        args = ["bud", "--pull=never", "--isolation", "chroot", "--layers=false",
                "--format", "docker", "--tag", name]
        if dockerfile is not None:
            args += ["--file", str(dockerfile)]
        for volume in volumes:
            args += ["--volume", volume]
        self.progress(*args, str(context))

    def save(self, name: str, dest: Path) -> None:
        """docker-archive of `name` whose RepoTags carry exactly `name`."""
        partial = dest.with_name(dest.name + ".partial")
        partial.unlink(missing_ok=True)
        self.run("push", "--quiet", name, f"docker-archive:{partial}:{name}")
        partial.replace(dest)

    def close(self) -> None:
        # The storage's overlay mounts must go before its files.
        subprocess.run([*self._global, "rm", "--all"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for mount in reversed(_mounts_under(self._root)):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(self._root, ignore_errors=True)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]


@contextmanager
def buildah_storage(parent: Path) -> Iterator[Buildah]:
    parent.mkdir(parents=True, exist_ok=True)
    builder = Buildah(Path(tempfile.mkdtemp(prefix="buildah-", dir=parent)))
    try:
        yield builder
    finally:
        builder.close()
