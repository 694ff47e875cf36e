"""m2e_jax/storage_clients.py: what `install()` sets for a command line's process, and a command
line reading an empty bucket ending in one line within bounded time.

`install()` changes process-wide state (environment, sys.unraisablehook, a logger, orbax's module
dicts), so it runs in a fresh interpreter (`sys.executable -c`), never in the test process.
"""

import json
import os
import subprocess
import sys
import time

from tests.test_gcs import LOOPBACK, gcs_run, hosts_contacted
from tests.test_reliability_workdir import ROOT

# Prints, as JSON, what install() left behind: etils.epath imported first (its choice of gs://
# backend is read when a gs:// path is first used, not at import), install() called twice.
PROBE = """
import json, logging, os, sys, types
from etils import epath
from etils.epath import gpath
passed = []
sys.unraisablehook = lambda unraisable: passed.append(repr(unraisable.exc_value))
from m2e_jax import storage_clients
storage_clients.install()
hook = sys.unraisablehook
storage_clients.install()
for error in (RuntimeError("Event loop is closed"), ValueError("a real one")):
    hook(types.SimpleNamespace(exc_value=error))
kept = []
gcsfs_log = logging.getLogger("gcsfs")
gcsfs_log.addHandler(logging.Handler())
gcsfs_log.handlers[-1].emit = lambda record: kept.append(record.getMessage())
gcsfs_log.error("_call out of retries on exception: timed out")  # as gcsfs/retry.py words it
gcsfs_log.error("some other gcsfs error")
from orbax.checkpoint._src.serialization import tensorstore_utils
print(json.dumps({
    "EPATH_USE_TF": os.environ.get("EPATH_USE_TF"),
    "epath_uses_tf": gpath._is_tf_installed(),
    "retries": [tensorstore_utils.get_ts_context(use_ocdbt=o).spec.to_json(include_defaults=True)
               .get("gcs_request_retries")
                for o in (True, False)],
    "hook_kept_on_second_install": sys.unraisablehook is hook,
    "passed": passed,
    "gcsfs_filters": sum(type(f).__name__ == "QuietClientRetries" for f in gcsfs_log.filters),
    "kept": kept,
}))
"""


def probe_install(**env: str) -> dict:
    full = {k: v for k, v in os.environ.items() if k != "EPATH_USE_TF"} | env
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=full, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_install_bounds_retries_wraps_the_hook_filters_gcsfs_and_defaults_epath_to_gcsfs():
    from m2e_jax import storage_clients

    got = probe_install()
    assert got["EPATH_USE_TF"] == "false" and got["epath_uses_tf"] is False
    assert got["retries"] == [storage_clients.BUCKET_RETRIES] * 2  # OCDBT and plain contexts
    assert got["hook_kept_on_second_install"] and got["gcsfs_filters"] == 1  # idempotent
    assert got["passed"] == ["ValueError('a real one')"]  # "Event loop is closed" dropped, the rest kept
    assert got["kept"] == ["some other gcsfs error"]

    preset = probe_install(EPATH_USE_TF="true")  # the user's choice of TensorFlow's file system stays
    assert preset["EPATH_USE_TF"] == "true" and preset["epath_uses_tf"] is True


def test_evaluate_on_a_bucket_without_a_complete_checkpoint_ends_in_one_line(fake_gcs, monkeypatch, tmp_path):
    """`python -m m2e_jax.evaluate --workdir gs://BUCKET/run` where the bucket holds only a half-copied
    step, EPATH_USE_TF unset: rc 1, one error line, no traceback, in bounded time. The error is the
    one for a folder that exists without a complete step, so the bucket was read through gcsfs
    (install()): TensorFlow's file system cannot reach the fake server and would say "no such
    checkpoint directory"."""
    monkeypatch.delenv("EPATH_USE_TF", raising=False)
    bucket = fake_gcs.bucket("m2e-no-checkpoint")
    fake_gcs.write("m2e-no-checkpoint", "run/checkpoints/3/state/partial", b"half a copy")
    t0 = time.time()
    r = gcs_run(fake_gcs, tmp_path, "m2e_jax.evaluate", "--workdir", f"{bucket}/run", timeout=120)
    elapsed = time.time() - t0
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert errors == [r.stderr.strip().splitlines()[-1]], r.stderr[-3000:]
    assert errors[0].startswith(f"m2e_jax.evaluate: error: --workdir {bucket}/run: no m2e_jax checkpoint "
                                f"there (expected {bucket}/run/checkpoints/<step>/"), errors
    assert elapsed < 120, elapsed
    assert hosts_contacted(tmp_path) <= LOOPBACK, hosts_contacted(tmp_path)


def test_a_library_process_gets_gcsfs_even_after_using_a_local_path_first():
    """etils fixes a process's gs:// backend at the first file operation on any path, local ones
    included: importing m2e_jax.workdir sets the default first, so a notebook or a test process that
    touches a local workdir before a bucket one still reads the bucket through gcsfs, the client the
    emulator variables reach (not TensorFlow's, which only knows storage.googleapis.com)."""
    code = ("from m2e_jax import workdir\n"
            "workdir.path('.').exists()\n"
            "from etils.epath import backend\n"
            "print(workdir.path('gs://bucket/run')._backend is backend.fsspec_backend)")
    env = {k: v for k, v in os.environ.items() if k != "EPATH_USE_TF"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "True"
