"""Docker-archive tars (the `docker save` format that `ctr images import` reads).

Writes a one-layer image from a root filesystem directory (the base and haproxy
images need no Dockerfile), and reads back an archive's names and config (the
cache check and the tests use it).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any


@dataclass(frozen=True)
class ArchiveInfo:
    repo_tags: list[str]
    config: dict[str, Any]  # the image config's "config" object (User, Entrypoint, Env...)
    layers: int


def read_archive(path: Path) -> ArchiveInfo:
    """Names, run config and layer count of a docker-archive tar."""
    with tarfile.open(path) as tar:
        manifest = json.load(_member(tar, "manifest.json"))
        if len(manifest) != 1:
            raise ValueError(f"{path}: {len(manifest)} images, expected one")
        entry = manifest[0]
        config = json.load(_member(tar, entry["Config"]))
    return ArchiveInfo(repo_tags=list(entry.get("RepoTags") or []),
                       config=dict(config.get("config") or {}),
                       layers=len(entry["Layers"]))


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    stream = tar.extractfile(name)
    if stream is None:
        raise ValueError(f"{tar.name!r}: {name} is not a regular file")
    return stream


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_rootfs_archive(rootfs: Path, dest: Path, name: str, config: dict[str, Any],
                         comment: str, file_capabilities: bool = False) -> None:
    """One-layer docker-archive of `rootfs` named `name` (a fully qualified repo:tag).

    GNU tar makes the layer: numeric owners, hard links, xattr-free, sorted for
    a stable digest when the files are the same. `file_capabilities` keeps the one
    xattr `security.capability` (a binary given `setcap`-style capabilities, as
    CoreDNS's image gives /coredns cap_net_bind_service).
    """
    work = dest.with_name(dest.name + ".parts")
    work.mkdir(parents=True, exist_ok=True)
    layer = work / "layer.tar"
    entries = sorted(os.listdir(rootfs))
    # The xattr needs the pax format: without atime/ctime and with a PID-free header name,
    # the same files still give the same layer.
    xattrs = ["--xattrs", "--xattrs-include=security.capability",
              "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime"
              ] if file_capabilities else []
    subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "--sort=name",
                    "--mtime=@0", *xattrs, "-cf", str(layer), "--", *entries], check=True)
    diff_id = _sha256(layer)
    created = datetime.fromtimestamp(0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    image_config = {
        "architecture": _go_arch(), "os": "linux", "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": created, "created_by": comment}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [name],
                 "Layers": [f"{diff_id}/layer.tar"]}]
    partial = dest.with_name(dest.name + ".partial")
    with tarfile.open(partial, "w") as out:
        _add_bytes(out, config_name, config_bytes)
        out.add(layer, arcname=f"{diff_id}/layer.tar")
        _add_bytes(out, "manifest.json", json.dumps(manifest).encode())
    partial.replace(dest)
    layer.unlink()
    work.rmdir()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _go_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def extract_paths(archive: Path, dest: Path, prefixes: tuple[str, ...]) -> int:
    """Extract the files under `prefixes` (e.g. "etc/ssl/") of a one-layer archive."""
    with tarfile.open(archive) as outer:
        manifest = json.load(_member(outer, "manifest.json"))
        layer = outer.extractfile(manifest[0]["Layers"][0])
        if layer is None:
            raise ValueError(f"{archive}: no layer")
        with tarfile.open(fileobj=layer, mode="r|") as inner:
            count = 0
            for member in inner:
                name = member.name.removeprefix("./")
                if name.startswith(prefixes) or f"{name}/" in prefixes:
                    member.name = name
                    inner.extract(member, dest, filter="fully_trusted")
                    count += 1
    return count


def unpack_rootfs(archive: Path, dest: Path) -> None:
    """The image's root filesystem: every layer in order, whiteouts applied."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as outer:
        manifest = json.load(_member(outer, "manifest.json"))
        for layer_name in manifest[0]["Layers"]:
            layer = outer.extractfile(layer_name)
            if layer is None:
                raise ValueError(f"{archive}: no layer {layer_name}")
            with tarfile.open(fileobj=layer, mode="r|") as inner:
                for member in inner:
                    path = Path(member.name.removeprefix("./"))
                    if path.name == ".wh..wh..opq":  # opaque dir: drop the lower layers' files
                        _clear(dest / path.parent)
                    elif path.name.startswith(".wh."):
                        _delete(dest / path.parent / path.name.removeprefix(".wh."))
                    else:
                        if not member.isdir():
                            _delete(dest / path)
                        inner.extract(member, dest, filter="fully_trusted")


def _clear(directory: Path) -> None:
    if directory.is_dir():
        for child in directory.iterdir():
            _delete(child)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
