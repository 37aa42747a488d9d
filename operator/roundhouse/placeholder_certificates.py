"""Throwaway certificates so `haproxy -c` can check a config offline (`render --check`,
and the tests that run haproxy -c)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from roundhouse import tls


def write_placeholder_certificates(directory: Path, files: Iterable[str],
                                   ca_files: Iterable[str] = ()) -> None:
    """Serving pairs for `files`, and a CA certificate alone for `ca_files`."""
    now = dt.datetime.now(dt.UTC)
    ca = tls.issue_ca("roundhouse-check", now)
    pair = tls.issue_serving(ca, ("check.invalid",), now, dt.timedelta(days=1))
    for name in files:
        (directory / name).write_text(pair.cert_pem + pair.key_pem)
    for name in ca_files:
        (directory / name).write_text(ca.cert_pem)
