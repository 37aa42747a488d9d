"""The proxy ConfigMap's files: plain text while small, gzip in binaryData when large.

The API server stores at most 1 MiB in one object. haproxy.cfg and servers.json grow
with the server slots (about 180 bytes a slot together), and slots double as endpoints
grow, so in plain text a LoadBalancer stopped fitting at about 3,300 endpoints.
Compressed (at gzip's fastest level) they are about 15 times smaller, which moves that
limit past 45,000 (bench/pipeline.py: 816 KB stored at 45,000; 55,000, at 131,072 slots,
no longer fit).

Small configurations stay plain text, so `kubectl get configmap -o yaml` shows them as
they are; above INLINE_LIMIT every file goes compressed (one form per ConfigMap, never a
mix). Compression is deterministic (no timestamp), so an unchanged config is an unchanged
object and server-side apply stays a no-op.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import zlib
from collections.abc import Mapping
from typing import Any

INLINE_LIMIT = 256 * 1024  # bytes of text, all files together
GZIP_SUFFIX = ".gz"
# Fastest level: a tenth larger than level 6 at 8,192 slots, in less than half the time,
# and every readiness flip of a large LoadBalancer compresses the whole config again.
COMPRESS_LEVEL = 1


class PayloadError(ValueError):
    """A compressed file that does not decode (base64, gzip, UTF-8)."""


def encode(files: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(data, binaryData) for a ConfigMap holding `files`."""
    if sum(len(text.encode()) for text in files.values()) <= INLINE_LIMIT:
        return dict(files), {}
    return {}, {name + GZIP_SUFFIX: base64.b64encode(
        gzip.compress(text.encode(), compresslevel=COMPRESS_LEVEL, mtime=0)).decode()
        for name, text in files.items()}


def decode(configmap: Mapping[str, Any]) -> dict[str, str]:
    """Every file of a ConfigMap body (as the API returns it), whichever form it is in."""
    files = {k: v for k, v in (configmap.get("data") or {}).items() if isinstance(v, str)}
    for key, value in (configmap.get("binaryData") or {}).items():
        if not key.endswith(GZIP_SUFFIX):
            continue
        try:
            files[key.removesuffix(GZIP_SUFFIX)] = gzip.decompress(
                base64.b64decode(value, validate=True)).decode()
        except (binascii.Error, OSError, EOFError, zlib.error, UnicodeDecodeError,
                TypeError) as err:
            raise PayloadError(f"binaryData {key} does not decode: {err}") from err
    return files


def stored_size(data: Mapping[str, str], binary: Mapping[str, str]) -> int:
    """Bytes the files take in the object (binaryData counts decoded, as etcd stores it)."""
    return (sum(len(v.encode()) for v in data.values())
            + sum(len(v) * 3 // 4 for v in binary.values()))
