"""A workdir in a bucket (issue 25), proved against a real GCS server: fake-gcs-server on 127.0.0.1
(tests/conftest.py `fake_gcs`), reached by the clients through their standard variables only.

The CLIs run as a user runs them, in a fresh process whose current folder is an empty one: the
trainer into `gs://BUCKET/run` (every file the run writes is an object in the bucket, nothing lands
locally but the dataset), then `infer`, `evaluate` and the web page's loader reading it, a damaged
newest checkpoint in the bucket, and a second trainer refused by the lock object. Every Python
name lookup and connection of those processes is recorded (tests/network_audit/sitecustomize.py)
and must be loopback; tensorstore's C++ client is pointed by TENSORSTORE_GCS_HTTP_URL and
GOOGLE_AUTH_TOKEN_FOR_TESTING, which make it ask nobody else.
"""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from m2e_jax import workdir as workdir_lib
from tests import processes
from tests.test_reliability_workdir import CKPT_EVERY, ROOT, TOTAL, trainer_flags

LOOPBACK = {"127.0.0.1", "localhost", "::1", "unix"}


def gcs_run(fake_gcs, tmp, module: str, *args, timeout=600, env=None) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` with the server's variables (and `env`), in the empty folder tmp/cwd,
    its Python connections logged to tmp/network.log."""
    cwd = tmp / "cwd"
    cwd.mkdir(exist_ok=True)
    audit = os.path.join(ROOT, "tests", "network_audit")
    full = processes.cpu_env(1, PYTHONPATH=f"{ROOT}{os.pathsep}{audit}",
                             M2E_NETWORK_LOG=str(tmp / "network.log"), **fake_gcs.env(), **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=timeout)


def train_into(fake_gcs, tmp, workdir: str, *overrides, env=None) -> subprocess.CompletedProcess:
    flags = trainer_flags(workdir, tmp / "data", *overrides)
    flags[1] = os.path.join(ROOT, flags[1])  # the config file, from the empty current folder
    return gcs_run(fake_gcs, tmp, "m2e_jax.main", *flags, env=env)


def hosts_contacted(tmp) -> set[str]:
    log = tmp / "network.log"
    return {line.split(" ", 1)[1].strip() for line in log.read_text().splitlines()} if log.exists() else set()


def events(data: bytes) -> list:
    """The Event protos of one TFRecord event file (length, masked CRC, data, masked CRC)."""
    from tensorboard.compat.proto import event_pb2

    out, at = [], 0
    while at < len(data):
        (n,) = struct.unpack("<Q", data[at:at + 8])
        out.append(event_pb2.Event.FromString(data[at + 12:at + 12 + n]))
        at += 12 + n + 4
    return out


@pytest.fixture(scope="module")
def trained(fake_gcs, tmp_path_factory):
    """`python -m m2e_jax.main --config configs/synthetic.py:test --workdir gs://m2e-run/run` (PAN
    stage, TOTAL steps: the compiled step the reliability tests share)."""
    tmp = tmp_path_factory.mktemp("gcs_trained")
    bucket = fake_gcs.bucket("m2e-run")
    t0 = time.time()
    r = train_into(fake_gcs, tmp, f"{bucket}/run")
    return {"tmp": tmp, "bucket": "m2e-run", "workdir": f"{bucket}/run", "result": r,
            "seconds": time.time() - t0}


@pytest.mark.slow
def test_training_into_a_bucket_writes_every_file_there_and_nothing_locally(trained, fake_gcs):
    r, tmp = trained["result"], trained["tmp"]
    assert r.returncode == 0, r.stderr[-3000:]
    objects = fake_gcs.objects(trained["bucket"])
    steps = sorted({int(n.split("/")[2]) for n in objects if n.startswith("run/checkpoints/")})
    assert steps == [CKPT_EVERY, 2 * CKPT_EVERY, TOTAL], sorted(objects)
    for step in steps:
        for name in ("commit_success.txt", "SHA256SUMS", "config/metadata", "state/manifest.ocdbt"):
            assert f"run/checkpoints/{step}/{name}" in objects, (step, name, sorted(objects))
    assert json.loads(fake_gcs.read("m2e-run", "run/config.json"))["schedule"]["pan_steps"] == TOTAL
    table = json.loads(fake_gcs.read("m2e-run", f"run/eval/step_{TOTAL:07d}.json"))
    assert table["step"] == TOTAL and table["metrics"]
    assert fake_gcs.read("m2e-run", f"run/images/step_{TOTAL:07d}.png").startswith(b"\x89PNG")
    assert "run/train.lock" not in objects  # released at the end
    logged = [e for name in objects if "events.out.tfevents." in name
              for e in events(fake_gcs.read("m2e-run", name))]
    scalars = {v.tag for e in logged for v in e.summary.value if v.HasField("simple_value")}
    images = {v.tag for e in logged for v in e.summary.value if v.HasField("image")}
    assert "train/g_total" in scalars and images == {"tryon/M_P_warp_PAN_TRN_FTN_target"}, (scalars, images)
    assert max(e.step for e in logged) == TOTAL
    # Nothing written locally: no `gs:` folder anywhere, the current folder still empty.
    assert os.listdir(tmp / "cwd") == [] and not os.path.exists(os.path.join(ROOT, "gs:"))
    assert sorted(os.listdir(tmp)) == ["cwd", "data", "network.log"]
    assert "bucket: free space is not checked" in r.stderr
    assert hosts_contacted(tmp) and hosts_contacted(tmp) <= LOOPBACK, hosts_contacted(tmp)
    print(f"trained {TOTAL} steps into the bucket in {trained['seconds']:.1f} s")


def test_infer_and_the_web_page_read_the_bucket(trained, fake_gcs, gcs_env, tmp_path):
    """`python -m m2e_jax.infer --workdir gs://... --output_dir gs://...` on the synthetic test pairs,
    and the web page's loader (m2e_jax.demo.load_demo) on the same workdir."""
    from m2e_jax import demo
    from m2e_jax.synthetic import dataset

    assert trained["result"].returncode == 0
    dataset.write_dataset(tmp_path / "syn", 0, 32, 32, 0, 4)
    r = gcs_run(fake_gcs, tmp_path, "m2e_jax.infer", "--workdir", trained["workdir"], "--pairs",
                str(tmp_path / "syn" / "test" / "triplets.csv"), "--output_dir", "gs://m2e-run/tryon")
    assert r.returncode == 0, r.stderr[-3000:]
    written = [n for n in fake_gcs.objects(trained["bucket"]) if n.startswith("tryon/")]
    assert len(written) == 3 and all(fake_gcs.read("m2e-run", n).startswith(b"\x89PNG") for n in written)
    assert os.listdir(tmp_path / "cwd") == []  # no local gs: folder
    assert hosts_contacted(tmp_path) <= LOOPBACK, hosts_contacted(tmp_path)
    page = demo.load_demo(workdir=trained["workdir"], max_upload_mb=1.0)
    assert str(page.net.checkpoint) == f"{trained['workdir']}/checkpoints/{TOTAL}"


def saved_state(workdir: str, step: int):
    """The raw saved state of `step` (orbax's own metadata, no template), read from the bucket."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(f"{workdir}/checkpoints") as mgr:
        return mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


def train_until_step_4(server, workdir: str, data, cwd) -> tuple[subprocess.Popen, str]:
    """The tiny trainer into `workdir` on `server`, running until it logs step 4's metrics: (the
    process, still running, with its output so far)."""
    flags = trainer_flags(workdir, data)
    flags[1] = os.path.join(ROOT, flags[1])
    env = processes.cpu_env(1, PYTHONPATH=ROOT, **server.env())
    proc = subprocess.Popen([sys.executable, "-m", "m2e_jax.main", *flags], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "] [4] train/" in line:
            break
    return proc, "".join(lines)


@pytest.mark.slow
def test_sigterm_then_rerun_resumes_from_the_bucket_to_the_same_state(trained, fake_gcs, gcs_env, tmp_path):
    """SIGTERM after step 4 is logged: the trainer saves the step into the bucket and exits 0; the
    rerun resumes there and its step TOTAL equals the uninterrupted run's bit for bit."""
    import jax

    bucket = fake_gcs.bucket("m2e-sigterm")
    proc, lines = train_until_step_4(fake_gcs, f"{bucket}/run", trained["tmp"] / "data", tmp_path)
    proc.send_signal(signal.SIGTERM)
    out = lines + proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    stopped = int(re.search(r"Stopping early .*: saved step (\d+)", out).group(1))
    assert CKPT_EVERY < stopped < TOTAL
    assert f"run/checkpoints/{stopped}/SHA256SUMS" in fake_gcs.objects("m2e-sigterm")
    r = train_into(fake_gcs, trained["tmp"], f"{bucket}/run")
    assert r.returncode == 0 and f"Resumed from step {stopped}" in r.stderr, r.stderr[-3000:]
    resumed, straight = saved_state(f"{bucket}/run", TOTAL), saved_state(trained["workdir"], TOTAL)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
        assert np.array_equal(a, b)


def test_a_damaged_newest_checkpoint_in_the_bucket(trained, fake_gcs):
    """4 KiB flipped in the newest step's largest array object: `evaluate --workdir gs://...` names it
    and uses the step before; rerunning the trainer moves it aside (copy + delete) to
    `<step>.corrupt` with one line and resumes from that step."""
    tmp, bucket, workdir = trained["tmp"], trained["bucket"], trained["workdir"]
    assert trained["result"].returncode == 0
    objects = fake_gcs.objects(bucket)
    state = f"run/checkpoints/{TOTAL}/state/"
    arrays = {n: s for n, s in objects.items() if n.startswith(state) and "/d/" in n}
    damaged = max(arrays, key=arrays.get)
    data = bytearray(fake_gcs.read(bucket, damaged))
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(255 - b for b in data[middle:middle + 4096])
    fake_gcs.write(bucket, damaged, bytes(data))
    rel = damaged[len(f"run/checkpoints/{TOTAL}/"):]

    ev = gcs_run(fake_gcs, tmp, "m2e_jax.evaluate", "--workdir", workdir, "--num_examples", "4")
    assert ev.returncode == 0 and "Traceback" not in ev.stderr, ev.stderr[-3000:]
    warned = [ln for ln in ev.stderr.splitlines() if ln.startswith("m2e_jax.evaluate: warning:")]
    assert len(warned) == 1 and f"checkpoints/{TOTAL} is damaged: {rel}: " in warned[0], ev.stderr[-2000:]
    assert warned[0].endswith(f"using step {2 * CKPT_EVERY} instead")
    assert f"run/eval/metrics_test_step{2 * CKPT_EVERY}.json" in fake_gcs.objects(bucket)

    r = train_into(fake_gcs, tmp, workdir)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if "is damaged" in ln]
    assert len(lines) == 1 and f"checkpoint step {TOTAL} " in lines[0] and rel in lines[0], lines
    assert f"Resumed from step {2 * CKPT_EVERY}" in r.stderr
    objects = fake_gcs.objects(bucket)
    assert f"run/checkpoints/{TOTAL}.corrupt/{rel}" in objects
    assert f"run/checkpoints/{TOTAL}/SHA256SUMS" in objects  # saved again
    assert hosts_contacted(tmp) <= LOOPBACK, hosts_contacted(tmp)


@pytest.mark.slow
def test_the_bucket_going_away_mid_run_ends_in_one_line_then_a_rerun_resumes(trained, own_fake_gcs, tmp_path):
    """The server stopped after step 4: the save of step 6 fails once the clients have retried
    (bounded: storage_clients.BUCKET_RETRIES, gcsfs's 6 tries), one line naming the step and the
    checkpoint to resume from, exit 1; the server back, the same command resumes from step 3."""
    server = own_fake_gcs
    bucket = server.bucket("m2e-outage")
    proc, lines = train_until_step_4(server, f"{bucket}/run", trained["tmp"] / "data", tmp_path)
    server.stop()
    t0 = time.time()
    out = lines + proc.communicate(timeout=400)[0]
    elapsed = time.time() - t0
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    last = out.strip().splitlines()[-1]
    failed_at = re.match(rf"m2e_jax.main: error: workdir {bucket}/run: cannot be written at step (\d+) \(",
                         last)
    assert failed_at and 4 < int(failed_at.group(1)) <= 2 * CKPT_EVERY, last  # events or checkpoint
    assert f"the last complete checkpoint is step {CKPT_EVERY}. When the bucket answers again" in last, last
    assert elapsed < 240, elapsed
    print(f"the run ended {elapsed:.0f} s after the server stopped")
    server.start()
    r = train_into(server, tmp_path, f"{bucket}/run")
    assert r.returncode == 0 and f"Resumed from step {CKPT_EVERY}" in r.stderr, r.stderr[-3000:]


def test_a_second_trainer_on_the_bucket_refuses_in_one_line(fake_gcs, tmp_path):
    """A lock object whose heartbeat is fresh (another run, on another host) stops the trainer before
    anything is compiled, in one line naming that run."""
    bucket = fake_gcs.bucket("m2e-locked")
    held = {"run": "0123abcd", "holder": "pid 4242 on other-host", "heartbeat": time.time()}
    fake_gcs.write("m2e-locked", "run/train.lock", json.dumps(held).encode())
    r = train_into(fake_gcs, tmp_path, f"{bucket}/run")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"m2e_jax.main: error: workdir {bucket}/run: in use by another training run "
                           "(pid 4242 on other-host, run 0123abcd, heartbeat "), last
    assert f"lock {bucket}/run/train.lock" in last
    assert not [n for n in fake_gcs.objects("m2e-locked") if "checkpoints" in n]


def test_object_lock_refuses_a_live_run_and_takes_over_a_stale_one(fake_gcs, gcs_env, caplog):
    fake_gcs.bucket("m2e-lock-unit")
    workdir = "gs://m2e-lock-unit/w"
    first = workdir_lib.WorkdirLock(workdir, stale_s=2.0).acquire()
    with pytest.raises(workdir_lib.WorkdirError, match=r"in use by another training run \(pid \d+ on "):
        workdir_lib.WorkdirLock(workdir, stale_s=2.0).acquire()
    time.sleep(1.2)  # heartbeats every stale_s / 5: the lock stays fresh while its run lives
    with pytest.raises(workdir_lib.WorkdirError):
        workdir_lib.WorkdirLock(workdir, stale_s=2.0).acquire()
    first._object._stop.set()  # the run dies without releasing: its heartbeat stops
    first._object._beat.join()
    time.sleep(2.2)
    second = workdir_lib.WorkdirLock(workdir, stale_s=2.0).acquire()
    assert [r for r in caplog.records if "taking over the lock left by pid" in r.getMessage()]
    record = json.loads(fake_gcs.read("m2e-lock-unit", "w/train.lock"))
    assert record["run"] == second._object.run != first._object.run
    second.release()
    assert "w/train.lock" not in fake_gcs.objects("m2e-lock-unit")


def test_local_paths_stay_local_and_urls_stay_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.fspath(workdir_lib.path("runs/a")) == str(tmp_path / "runs" / "a")
    assert os.fspath(workdir_lib.path("gs://b/run") / "checkpoints") == "gs://b/run/checkpoints"
    assert workdir_lib.is_local("runs/a") and not workdir_lib.is_local("gs://b/run")
    workdir_lib.write_atomic(tmp_path / "x" / "y.json", b"{}")
    assert os.listdir(tmp_path / "x") == ["y.json"]  # no temporary left beside it
    assert (tmp_path / "x" / "y.json").read_bytes() == b"{}"


def test_training_from_records_in_a_bucket_stages_them_once(fake_gcs, gcs_env, tmp_path):
    """Records built by data_prep.build, copied into a bucket; `--config.dataset.data_dir=gs://...`
    copies them to this host's disk (M2E_STAGE_DIR) once, resumably, and trains from the copy."""
    from data_prep import build

    built = build.build("synthetic", tmp_path / "manual", tmp_path / "tfds", 32, 32, synthetic_counts=(16, 8),
                        workers=0)
    bucket = fake_gcs.bucket("m2e-records")
    remote = f"{bucket}/tfds/{os.path.relpath(built, tmp_path / 'tfds')}"
    assert workdir_lib.copy_missing(built, remote) == len(os.listdir(built))
    assert workdir_lib.copy_missing(built, remote) == 0  # a rerun copies nothing more
    stage = tmp_path / "stage"
    r = train_into(fake_gcs, tmp_path, str(tmp_path / "work"), "--config.dataset.source=tfds",
                   f"--config.dataset.data_dir={bucket}/tfds", "--config.schedule.pan_steps=2",
                   "--config.checkpoint_every=2", "--config.eval_every=2", "--config.image_every=2",
                   env={"M2E_STAGE_DIR": str(stage)})
    assert r.returncode == 0, r.stderr[-3000:]
    local = stage / "m2e-records" / "tfds" / os.path.relpath(built, tmp_path / "tfds")
    assert sorted(os.listdir(local)) == sorted(os.listdir(built))
    assert "(0 files copied)" in r.stderr  # train and test split: the second open finds it all there


def test_build_into_a_bucket_uploads_what_the_trainer_reads(fake_gcs, gcs_env, tmp_path, monkeypatch):
    """`python -m data_prep.build --data_dir gs://BUCKET/tfds` builds on this disk (M2E_STAGE_DIR, where
    the trainer stages that data_dir) and uploads the dataset folder, resumably; the trainer's reader
    for the gs:// data_dir on a fresh host reads the same examples, bit for bit, as a local build."""
    from data_prep import build
    from m2e_jax import tfds_source

    bucket, config = fake_gcs.bucket("m2e-built"), "synthetic_32x32"
    stage = tmp_path / "stage"
    cli = ["--dataset", "synthetic", "--manual_dir", str(tmp_path / "manual"), "--height", "32",
           "--width", "32", "--workers", "0", "--data_dir", f"{bucket}/tfds"]
    r = gcs_run(fake_gcs, tmp_path, "data_prep.build", *cli, env={"M2E_STAGE_DIR": str(stage)})
    assert r.returncode == 0, r.stderr[-3000:]
    remote = f"{bucket}/tfds/m2e_dataset/{config}/1.0.0"
    assert r.stdout.splitlines()[-1] == f"built {remote}; report: {remote}/build_report.txt"
    local = stage / "m2e-built" / "tfds" / "m2e_dataset" / config / "1.0.0"
    prefix = f"tfds/m2e_dataset/{config}/1.0.0/"
    built = {prefix + f.name: f.stat().st_size for f in local.iterdir()}
    assert any(".array_record-" in name for name in built)
    assert fake_gcs.objects("m2e-built") == built
    assert not os.listdir(tmp_path / "cwd")  # nothing written where the command ran (no ./gs: folder)
    assert hosts_contacted(tmp_path) <= LOOPBACK, hosts_contacted(tmp_path)

    # an upload cut short (the records and dataset_info.json missing): a rerun uploads what is missing
    fs = workdir_lib.bucket_fs(remote)
    for name in built:
        if name.endswith(("dataset_info.json", ".array_record-00000-of-00001")):
            fs.rm_file(f"m2e-built/{name}")
    r = gcs_run(fake_gcs, tmp_path, "data_prep.build", *cli, env={"M2E_STAGE_DIR": str(stage)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert fake_gcs.objects("m2e-built") == built
    monkeypatch.setenv("M2E_STAGE_DIR", str(stage))
    assert workdir_lib.copy_missing(remote, local) == 0  # the trainer here finds every file staged

    # the trainer's reader on another host (an empty stage folder) copies the bucket's records
    monkeypatch.setenv("M2E_STAGE_DIR", str(tmp_path / "other_host"))
    here = build.build("synthetic", tmp_path / "manual", tmp_path / "tfds", 32, 32, workers=0)
    for split in ("train", "test"):
        from_bucket = tfds_source.load_source(f"{bucket}/tfds", config, split, with_meta=True)
        from_disk = tfds_source.load_source(tmp_path / "tfds", config, split, with_meta=True)
        assert len(from_bucket) == len(from_disk) > 0
        for a, b in zip(from_bucket, from_disk):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{split} {key}")
    copied = tmp_path / "other_host" / "m2e-built" / "tfds" / "m2e_dataset" / config / "1.0.0"
    assert sorted(os.listdir(copied)) == sorted(os.listdir(here))
