"""Files the agent owns in the runtime directory, written atomically.

    <runtime_dir>/haproxy.cfg         the config HAProxy runs (and restarts with)
    <runtime_dir>/servers.json        the server-state document that goes with it
    <runtime_dir>/agent-state.json    what the agent last applied (config + cert digests)
    <runtime_dir>/certs/<file>        PEM bundles: tls.crt + tls.key (or a ca.crt), mode 0600
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFIG = "haproxy.cfg"
SERVERS = "servers.json"
STATE = "agent-state.json"
CERTS = "certs"

_CERT_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.pem$")
# crt-base and ca-base: the check copy reads staged certificates and CA bundles.
_CRT_BASE = re.compile(r"^(\s*(?:crt|ca)-base\s+)(\S+)(.*)$", re.MULTILINE)


def check_cert_file_name(name: str) -> str:
    """A bare file name: no directory parts, so a ConfigMap cannot point us elsewhere."""
    if not _CERT_FILE.match(name) or ".." in name:
        raise ValueError(f"invalid certificate file name {name!r}")
    return name


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write to a temporary file in the same directory, fsync, chmod, rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def read_json(path: Path) -> dict[str, Any] | None:
    text = read_text(path)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def pem_bundle(crt: bytes | str, key: bytes | str) -> str:
    """tls.crt + tls.key as HAProxy wants them in one file."""
    c = crt.decode() if isinstance(crt, bytes) else crt
    k = key.decode() if isinstance(key, bytes) else key
    return c.strip() + "\n" + k.strip() + "\n"


class RuntimeFiles:
    def __init__(self, runtime_dir: str | Path) -> None:
        self.root = Path(runtime_dir)
        self.config = self.root / CONFIG
        self.servers = self.root / SERVERS
        self.state = self.root / STATE
        self.cert_dir = self.root / CERTS

    def cert_path(self, file: str) -> Path:
        return self.cert_dir / check_cert_file_name(file)

    def write_config(self, config: str, servers: str | Mapping[str, Any]) -> None:
        """`servers`: the document, or its text (as received, or json.dumps with sorted
        keys). The file ends with one more newline, which `Agent.load` takes off."""
        # Compact: json's C encoder (indent= would use the pure-Python one, 50 ms at 8,192
        # slots); `jq . servers.json` reads it.
        text = servers if isinstance(servers, str) else json.dumps(servers, sort_keys=True)
        atomic_write(self.servers, text + "\n")
        atomic_write(self.config, config)

    def write_cert(self, file: str, pem: str) -> None:
        self.cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.cert_path(file), pem, mode=0o600)

    def read_cert(self, file: str) -> str | None:
        return read_text(self.cert_path(file))

    def remove_stale_certs(self, keep: set[str]) -> list[str]:
        removed: list[str] = []
        if not self.cert_dir.is_dir():
            return removed
        for p in self.cert_dir.iterdir():
            if p.is_file() and _CERT_FILE.match(p.name) and p.name not in keep:
                p.unlink(missing_ok=True)
                removed.append(p.name)
        return sorted(removed)

    def write_state(self, state: Mapping[str, Any]) -> None:
        atomic_write(self.state, json.dumps(state, indent=1, sort_keys=True) + "\n", mode=0o600)

    def clear_state(self) -> None:
        self.state.unlink(missing_ok=True)

    def read_state(self) -> dict[str, Any] | None:
        return read_json(self.state)

    def staging(self) -> Staging:
        return Staging(self)


class Staging:
    """A scratch copy of config + certificates, so `haproxy -c` checks exactly what would load.

    Lives inside the runtime directory: moving a checked file into place is a rename.
    """

    def __init__(self, files: RuntimeFiles) -> None:
        files.root.mkdir(parents=True, exist_ok=True)
        self.files = files
        self.dir = Path(tempfile.mkdtemp(prefix=".staging-", dir=files.root))
        self.cert_dir = self.dir / CERTS
        self.cert_dir.mkdir(mode=0o700)
        self.config = self.dir / CONFIG
        self.check_config = self.dir / "check.cfg"

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def write(self, config: str, certs: Mapping[str, str]) -> None:
        for file, pem in certs.items():
            atomic_write(self.cert_dir / check_cert_file_name(file), pem, mode=0o600)
        atomic_write(self.config, config)
        # The copy `haproxy -c` reads loads the staged certificates instead of the live ones.
        atomic_write(self.check_config, _CRT_BASE.sub(
            lambda m: f"{m.group(1)}{self.cert_dir}{m.group(3)}", config))

    def install(self, certs: Mapping[str, str]) -> None:
        """Move the staged certificates into the live cert directory."""
        self.files.cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for file in certs:
            os.replace(self.cert_dir / file, self.files.cert_path(file))

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
