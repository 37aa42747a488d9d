"""The offline images of the real-Pods tier (e2e/images/build.py) are what their consumers need.

Builds (or takes from the cache) every image, then checks each archive's name, its run
config, and what runs inside: the operator's entry point, HAProxy 3.4 validating a
rendered config, and HAProxy's master-worker reload on a read-only root as the Pod's uid.
Needs root, buildah and debootstrap (a cold build takes minutes; a cached one, a second).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from e2e.images.archive import read_archive, unpack_rootfs
from e2e.images.build import BuiltImage, build_all

from roundhouse.agent.runtime import RuntimeClient
from roundhouse.render.objects import PROXY_UID, RUNTIME_DIR, ProxyImages

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="builds images: needs root"),
    pytest.mark.skipif(shutil.which("buildah") is None or shutil.which("debootstrap") is None,
                       reason="needs buildah and debootstrap (apt-get install them)"),
    # A cold build (debootstrap, pip) takes several minutes on 2 cores.
    pytest.mark.timeout(1800),
]


def normalised(image: str) -> str:
    """The name containerd gives a short image reference (haproxy:3.4 -> docker.io/library/...)."""
    first = image.split("/", 1)[0]
    if "/" not in image:
        return f"docker.io/library/{image}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{image}"
    return image


@pytest.fixture(scope="module")
def images() -> dict[str, BuiltImage]:
    return {image.role: image for image in build_all()}


class UnpackedRoots(dict[str, Path]):
    """role -> the image's root filesystem, unpacked on first use (the operator's is big)."""

    def __init__(self, images: dict[str, BuiltImage], work: Path) -> None:
        super().__init__()
        self._images = images
        self._work = work

    def __missing__(self, role: str) -> Path:
        root = self._work / role
        unpack_rootfs(self._images[role].archive, root)
        # What a container runtime provides and an image does not carry (HAProxy 3.4 opens
        # /dev/null even for `-c`).
        (root / "dev").mkdir(exist_ok=True)
        if not (root / "dev/null").exists():
            os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            os.chmod(root / "dev/null", 0o666)
        self[role] = root
        return root


@pytest.fixture(scope="module")
def rootfs(images: dict[str, BuiltImage]) -> Iterator[dict[str, Path]]:
    with tempfile.TemporaryDirectory(prefix="images-test-") as work:
        yield UnpackedRoots(images, Path(work))


def in_image(root: Path, *argv: str, uid: int = PROXY_UID,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run argv inside the image's root as uid (a chroot: same files, same user)."""
    return subprocess.run(["chroot", f"--userspec={uid}:{uid}", str(root), *argv],
                          capture_output=True, text=True, timeout=120,
                          env=env or {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"})


def test_each_archive_carries_the_exact_name_its_consumer_uses(
        images: dict[str, BuiltImage]) -> None:
    values = yaml.safe_load((REPO / "manifests/roundhouse/values.yaml").read_text())
    chart_haproxy = normalised(values["proxy"]["haproxyImage"])
    assert chart_haproxy == normalised(ProxyImages().haproxy) == "docker.io/library/haproxy:3.4"
    assert images["haproxy"].name == chart_haproxy
    assert images["operator"].name.startswith("docker.io/library/roundhouse:")
    assert images["echo"].name.startswith("docker.io/library/roundhouse-echo:")
    for image in images.values():
        assert image.archive.is_file()
        assert read_archive(image.archive).repo_tags == [image.name]


def test_operator_image_runs_roundhouse_as_10001(images: dict[str, BuiltImage],
                                                  rootfs: dict[str, Path]) -> None:
    config = read_archive(images["operator"].archive).config
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["roundhouse"]
    assert config["Healthcheck"] == {"Test": ["NONE"]}  # kept: docker format, not OCI
    env = dict(item.split("=", 1) for item in config["Env"])
    # The venv's python links to the base image's: it must run in the final image.
    ran = in_image(rootfs["operator"], "roundhouse", "--help", uid=10001, env=env)
    assert ran.returncode == 0, ran.stderr
    assert "render" in ran.stdout and "agent" in ran.stdout
    assert not (rootfs["operator"] / "opt/venv/bin/pip").exists()  # the Dockerfile drops pip
    # pip saw the build host's CA bundle through a mount only: the image keeps the base's
    # (Debian's, the same one the haproxy image copies), not the host's intercepting CA.
    bundle = "etc/ssl/certs/ca-certificates.crt"
    assert (rootfs["operator"] / bundle).read_bytes() == (rootfs["haproxy"] / bundle).read_bytes()


def test_echo_image_runs_its_server_as_10002(images: dict[str, BuiltImage],
                                             rootfs: dict[str, Path]) -> None:
    config = read_archive(images["echo"].archive).config
    assert config["User"] == "10002:10002"
    assert config["Entrypoint"] == ["python", "/app/server.py"]
    ran = in_image(rootfs["echo"], "python", "-c",
                   "import sys, ast; ast.parse(open('/app/server.py').read());"
                   "print(sys.version_info[:2])", uid=10002)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "(3, 11)"


def test_haproxy_image_is_the_32_lts_and_takes_the_pods_args(
        images: dict[str, BuiltImage], rootfs: dict[str, Path]) -> None:
    config = read_archive(images["haproxy"].archive).config
    assert config["Entrypoint"] == ["haproxy"]  # args [-W, -db, ...] go to haproxy
    assert config["User"] == f"{PROXY_UID}:{PROXY_UID}"
    ran = in_image(rootfs["haproxy"], "haproxy", "-vv")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("HAProxy version 3.4."), ran.stdout[:200]
    assert "USE_OPENSSL=1" in ran.stdout and "Prometheus exporter" in ran.stdout


def test_haproxy_image_has_the_system_cas(rootfs: dict[str, Path]) -> None:
    """The renderer verifies TLS upstreams with `ca-file @system-ca` when no CA is given."""
    (rootfs["haproxy"] / "tmp/ca.cfg").write_text(
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 1s\n"
        "  timeout server 1s\nfrontend fe\n  bind 127.0.0.1:8080\n  default_backend be\n"
        "backend be\n"
        "  server s 127.0.0.1:8443 ssl verify required ca-file @system-ca\n")
    ran = in_image(rootfs["haproxy"], "haproxy", "-c", "-f", "/tmp/ca.cfg")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # Without them HAProxy only warns, and every TLS upstream would then fail to verify.
    assert "0 CA were loaded" not in ran.stdout + ran.stderr


def rendered_config() -> str:
    return subprocess.run(
        [sys.executable, "-m", "roundhouse.cli", "render",
         "-f", str(REPO / "examples/http-roundrobin.yaml"),
         "--services", str(REPO / "examples/offline-cluster.yaml"), "--haproxy-cfg"],
        check=True, capture_output=True, text=True).stdout


def test_haproxy_image_validates_a_rendered_config(rootfs: dict[str, Path]) -> None:
    config = rendered_config()
    (rootfs["haproxy"] / "tmp/haproxy.cfg").write_text(config)
    ran = in_image(rootfs["haproxy"], "haproxy", "-c", "-f", "/tmp/haproxy.cfg")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # ... and the same check does reject a broken one.
    (rootfs["haproxy"] / "tmp/broken.cfg").write_text(config + "    no-such-keyword 1\n")
    assert in_image(rootfs["haproxy"], "haproxy", "-c", "-f", "/tmp/broken.cfg").returncode != 0


def test_haproxy_reloads_on_a_read_only_root_as_the_pod_uid(rootfs: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """The Pod's args, uid and read-only root; the agent's own client reloads it."""
    root = rootfs["haproxy"]
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    os.chown(runtime, PROXY_UID, PROXY_UID)
    # This machine's hard open-files limit (20000) is below what maxconn 10000 asks for;
    # a known product limit, not the image's: lower it here.
    (runtime / "haproxy.cfg").write_text(
        rendered_config().replace("maxconn 10000", "maxconn 1000"))
    (root / "dev/null").touch()
    # /var/run -> ../run in the image; the runtime creates the mount point, as here.
    mount_point = root / "run" / Path(RUNTIME_DIR).name
    assert (root / RUNTIME_DIR.lstrip("/")).parent.resolve() == mount_point.parent
    mount_point.mkdir(exist_ok=True)
    args = ["-W", "-db", "-S", f"{RUNTIME_DIR}/master.sock", "-f", f"{RUNTIME_DIR}/haproxy.cfg"]
    # A private mount and network namespace: the root read-only, the runtime dir an
    # emptyDir-like bind, ports below 1024 allowed as in the Pod's sysctl; no traffic leaves.
    script = (f"set -e; ip link set lo up; sysctl -q -w net.ipv4.ip_unprivileged_port_start=0;"
              f" mount --bind {root} {root}; mount --bind /dev/null {root}/dev/null;"
              f" mount --bind {runtime} {mount_point};"
              f" mount -o remount,bind,ro {root};"
              f" exec chroot --userspec={PROXY_UID}:{PROXY_UID} {root} haproxy {' '.join(args)}")
    log = (tmp_path / "haproxy.log").open("w")
    proc = subprocess.Popen(["unshare", "--mount", "--net", "--propagation", "private",
                             "sh", "-c", script], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    client = RuntimeClient(runtime, timeout=5.0)
    try:
        try:
            before = client.wait_until_up(timeout=60)
        except Exception as err:
            raise AssertionError((tmp_path / "haproxy.log").read_text()[-2000:]) from err
        after = client.reload(timeout=60)
        assert after.reloads == before.reloads + 1
        assert set(after.workers).isdisjoint(before.workers)
        # The root stayed read-only for HAProxy: writing there fails even for root here.
        probe = subprocess.run(["nsenter", "-t", str(proc.pid), "-m", "touch", f"{root}/x"],
                               capture_output=True, text=True)
        assert probe.returncode != 0 and "Read-only" in probe.stderr
    finally:
        proc.terminate()  # haproxy's master: it stops its workers
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


CONTAINERD_CONFIG = """version = 2
root = "{work}/root"
state = "{work}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{work}/containerd.sock"
[ttrpc]
  address = "{work}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{work}/opt"
"""


@pytest.mark.skipif(shutil.which("containerd") is None or shutil.which("ctr") is None,
                    reason="needs containerd and ctr (apt-get install containerd)")
def test_ctr_import_registers_the_exact_names(images: dict[str, BuiltImage]) -> None:
    """A private containerd (own root, state, socket; any pull goes to a closed port)."""
    with tempfile.TemporaryDirectory(prefix="containerd-", dir="/var/tmp") as work:
        config = Path(work) / "config.toml"
        config.write_text(CONTAINERD_CONFIG.format(work=work))
        closed = "http://127.0.0.1:9"  # nothing listens: a pull could not leave the machine
        env = {"PATH": os.environ["PATH"], "HTTP_PROXY": closed, "HTTPS_PROXY": closed,
               "NO_PROXY": ""}
        log = (Path(work) / "containerd.log").open("w")
        daemon = subprocess.Popen(["containerd", "--config", str(config)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        sock = Path(work) / "containerd.sock"
        ctr = ["ctr", "--address", str(sock), "--namespace", "k8s.io"]
        try:
            deadline = time.monotonic() + 30
            while subprocess.run([*ctr, "version"], capture_output=True).returncode != 0:
                assert daemon.poll() is None, (Path(work) / "containerd.log").read_text()
                assert time.monotonic() < deadline, "containerd did not start"
                time.sleep(0.2)
            for image in images.values():
                subprocess.run([*ctr, "images", "import", str(image.archive)], check=True,
                               capture_output=True, env=env)
            listed = subprocess.run([*ctr, "images", "ls", "-q"], check=True,
                                    capture_output=True, text=True).stdout.split()
            assert {image.name for image in images.values()} <= set(listed)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
            log.close()
            for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
                if line.split()[1].startswith(work + "/"):
                    subprocess.run(["umount", "-l", line.split()[1]], check=False)
