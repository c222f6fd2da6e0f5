"""A private Docker daemon for the `docker`-marked tests, plus the CPU image they run.

The tests never touch a system daemon: they start their own dockerd (as root) with no bridge
network, no iptables and a socket, data root and exec root under a temp dir, and stop it by the
PID they started. Containers therefore get only `--network none` or `--network host` (builds).
The Debian bookworm base image comes from debootstrap (registries are not reachable from CI);
its rootfs tarball is cached under $D2O_BENCH_DOCKER_CACHE (default ~/.cache/d2o-bench/docker)
so reruns skip it.
"""

from __future__ import annotations

import functools
import glob
import http.server
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE_TAG = "d2o-bench-base:bookworm-minbase"
CPU_IMAGE_TAG = "d2o-bench:cpu-test"
DEBIAN_MIRROR = os.environ.get("D2O_BENCH_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def docker_cache_dir() -> Path:
    default = Path.home() / ".cache" / "d2o-bench" / "docker"
    return Path(os.environ.get("D2O_BENCH_DOCKER_CACHE", default))


def why_docker_tests_cannot_run() -> str | None:
    """None when a private daemon can be started here, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root to start a private dockerd"
    for tool in ("dockerd", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install -y docker.io debootstrap)"
    try:
        import docker  # noqa: F401
    except ImportError:
        return "the docker Python SDK is not installed"
    return None


class PrivateDockerDaemon:
    """dockerd on a unix socket in a temp dir; `stop()` ends exactly the process we started."""

    def __init__(self) -> None:
        # Short prefix under /tmp: unix socket paths are limited to ~108 bytes.
        self.state_dir = Path(tempfile.mkdtemp(prefix="d2od-", dir="/tmp"))
        self.socket_path = self.state_dir / "docker.sock"
        self.log_path = self.state_dir / "dockerd.log"
        self._process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout_s: float = 60.0):
        import docker

        command = [
            "dockerd",
            "--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
            "--data-root", str(self.state_dir / "data"),
            "--exec-root", str(self.state_dir / "exec"),
            "--host", self.base_url,
            "--pidfile", str(self.state_dir / "dockerd.pid"),
        ]
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"dockerd exited early (rc {self._process.returncode}): "
                                   f"{self.log_tail()}")
            if self.socket_path.exists():
                try:
                    client = docker.DockerClient(base_url=self.base_url, timeout=600)
                    client.ping()
                    return client
                except Exception:  # daemon still initialising
                    pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"dockerd did not answer within {timeout_s:.0f}s: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        # Leftover overlay mounts under the data root would make rmtree fail.
        subprocess.run(["sh", "-c", f"grep -o ' {self.state_dir}[^ ]*' /proc/mounts "
                                    "| sort -r | xargs -r -n1 umount -l"], check=False)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def bookworm_rootfs_tarball() -> Path:
    """debootstrap a minimal bookworm once and keep the tarball in the cache."""
    cache = docker_cache_dir()
    tarball = cache / "bookworm-minbase.tar"
    if tarball.exists():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="d2o-rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
                       check=True, stdout=subprocess.DEVNULL)
        # debootstrap keeps the .debs it installed (~100 MB nobody needs in the base image).
        for deb in (rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            deb.unlink()
        partial = tarball.with_suffix(".tar.partial")
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
                       check=True)
        partial.rename(tarball)  # atomic: a killed run never leaves a truncated cache entry
    return tarball


def import_base_image(client) -> str:
    """`docker import` the cached rootfs as BASE_IMAGE_TAG; returns the image id."""
    tarball = bookworm_rootfs_tarball()
    repository, tag = BASE_IMAGE_TAG.split(":")
    with open(tarball, "rb") as data:
        client.api.import_image_from_data(data.read(), repository=repository, tag=tag)
    return client.images.get(BASE_IMAGE_TAG).id


def local_torch_cpu_wheel_dir() -> Path | None:
    """Directory holding the locked torch +cpu wheel, if this machine has one (no PyTorch index)."""
    candidates = [os.environ.get("D2O_BENCH_TORCH_WHEEL_DIR", ""), "/opt/wheels"]
    candidates += os.environ.get("PIP_FIND_LINKS", "").split()
    for directory in candidates:
        if directory and glob.glob(os.path.join(directory, "torch-*+cpu-cp311-*.whl")):
            return Path(directory)
    return None


class LoopbackFileServer:
    """Serves one directory on 127.0.0.1 so a `--network host` build can use it as find-links."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "LoopbackFileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        pass


def git_commit() -> str:
    result = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def build_cpu_image(client, *, uid: int, gid: int, log_path: Path | None = None) -> str:
    """Build the CPU variant of docker/Dockerfile on the imported bookworm base; returns its id."""
    import_base_image(client)
    wheel_dir = local_torch_cpu_wheel_dir()
    build_args = {
        "BASE_IMAGE": BASE_IMAGE_TAG,
        "LOCK_FILE": "docker/requirements-cpu.lock",
        "DS_BUILD_OPS": "0",
        "DS_BUILD_ACCELERATOR": "cpu",
        "OP_BUILD_APT_PACKAGES": "",
        "UID": str(uid),
        "GID": str(gid),
        "GIT_COMMIT": git_commit(),
    }

    def build(extra_args: dict[str, str]) -> str:
        lines = []
        stream = client.api.build(path=str(REPO_ROOT), dockerfile="docker/Dockerfile",
                                  tag=CPU_IMAGE_TAG, buildargs={**build_args, **extra_args},
                                  network_mode="host", rm=True, forcerm=True, decode=True)
        for chunk in stream:
            if "stream" in chunk:
                lines.append(chunk["stream"])
            if "error" in chunk:
                lines.append(chunk["error"])
                if log_path:
                    log_path.write_text("".join(lines))
                raise RuntimeError(f"docker build failed: {chunk['error'].strip()} "
                                   f"(log: {log_path})")
        if log_path:
            log_path.write_text("".join(lines))
        return client.images.get(CPU_IMAGE_TAG).id

    ca_bundle = next((os.environ[v] for v in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
                      if os.environ.get(v) and Path(os.environ[v]).is_file()), None)
    with tempfile.TemporaryDirectory(prefix="d2o-build-files-") as served:
        served_dir = Path(served)
        extra: dict[str, str] = {}
        with LoopbackFileServer(served_dir) as server:
            if wheel_dir is None:
                extra["WHEEL_INDEX_EXTRA"] = PYTORCH_CPU_INDEX
            else:
                for wheel in wheel_dir.glob("torch-*+cpu-cp311-*.whl"):
                    (served_dir / wheel.name).symlink_to(wheel)
                extra["WHEEL_FIND_LINKS"] = server.url
            if ca_bundle:
                # This machine reaches PyPI through a TLS-intercepting proxy; let pip trust it.
                shutil.copyfile(ca_bundle, served_dir / "build-ca.pem")
                extra["BUILD_CA_BUNDLE_URL"] = server.url + "build-ca.pem"
            return build(extra)


# --- pytest plumbing shared by test_docker_image.py and test_executors.py -------------------

# The image is built for, and run as, this unprivileged UID/GID: it stands in for the host user
# (tests run as root) so a test can tell "owned by the host user" from "owned by root".
TEST_UID = TEST_GID = 4242
BUILD_LOG = Path(tempfile.gettempdir()) / "d2o-bench-docker-build.log"

_session: dict = {}


def harness_home_for_tests() -> Path:
    """The harness cache (/cache/d2o-bench) the image tests mount, kept across test runs as a
    user's cache volume would be: content-addressed, so reuse cannot go stale, and the tiny
    world is built once instead of in every test."""
    home = docker_cache_dir() / "d2o-bench-home"
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, TEST_UID, TEST_GID)
    return home


def _shared_image_session():
    """Start one daemon and build the CPU image once per pytest process, whichever test asks
    first; `stop_shared_session` (a session finalizer) ends the daemon by its PID."""
    if "error" in _session:
        raise _session["error"]
    if "client" not in _session:
        daemon = PrivateDockerDaemon()
        _session["daemon"] = daemon
        try:
            client = daemon.start()
            image_id = build_cpu_image(client, uid=TEST_UID, gid=TEST_GID, log_path=BUILD_LOG)
        except Exception as error:
            _session["error"] = error
            stop_shared_session()
            raise
        _session.update(client=client, image_id=image_id)
    return _session["client"], _session["image_id"]


def stop_shared_session() -> None:
    daemon = _session.pop("daemon", None)
    client = _session.pop("client", None)
    _session.pop("image_id", None)
    if client is not None:
        client.close()
    if daemon is not None:
        daemon.stop()


def cpu_image_for_session(request):
    """Body of the session-scoped `cpu_image` fixtures: (docker client, image id) of the CPU
    image on a private daemon, or a skip with the reason; the daemon stops at session end."""
    import pytest

    reason = why_docker_tests_cannot_run()
    if reason:
        pytest.skip(reason)
    request.addfinalizer(stop_shared_session)
    return _shared_image_session()
