"""The HAProxy the tests run as "LTS" is the branch the chart's proxy image runs."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from roundhouse.render.objects import ProxyImages
from tests.unit.conftest import REPO, haproxy_binaries, haproxy_version

SCRIPT = REPO / "e2e" / "cluster" / "fetch-haproxy-lts.sh"


def test_fetch_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_lts_binary_is_the_branch_of_the_charts_haproxy_image() -> None:
    binaries = haproxy_binaries()
    if len(binaries) < 2:
        pytest.skip("no LTS haproxy on this machine (ROUNDHOUSE_HAPROXY_LTS=none)")
    values = yaml.safe_load((REPO / "manifests" / "roundhouse" / "values.yaml").read_text())
    image: str = values["proxy"]["haproxyImage"]
    assert image == ProxyImages().haproxy, "the operator's default is the chart's"
    series = image.rsplit(":", 1)[1]  # haproxy:3.4 -> 3.4
    assert haproxy_version(binaries[1]).startswith(f"{series}."), (image, binaries[1])
    assert haproxy_version(binaries[0]).startswith("2.6."), "Debian 12's own haproxy"
