"""A new user's journey through the README, as printed: train -> try on one pair of their own photos
(DensePose only, larger than the network) -> try on a pairs file -> evaluate.

Each command is the README's (the test first checks the README still prints it), run in a fresh
folder laid out as a clone (symlinks to the repository's packages and configs), with its relative
paths and default flags. Only the sizes shrink: the tiny `configs/synthetic.py:test` (32x32
networks, 6 steps) instead of the demo config, and a few photos instead of a thousand. The photos
are the synthetic world's (`python -m m2e_jax.synthetic`, 128x96: four times the network's size),
given as a DensePose user has them: `m.jpg` with `m_IUV.png` (Detectron's OpenCV channel order,
as the writer stores it) and nothing else, no parsing map.

Asserted: every command exits 0 and prints no traceback; the try-on has the person photo's size;
most of the person's garment changed (far more than resampling P would change it) and every pixel
away from the garment's body parts is the person's own; evaluate writes its JSON and Markdown tables.
Subprocesses share the test session's persistent compilation cache (tests/conftest.py), so only the
first run of the suite pays for compiling.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from m2e_jax import densepose

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

# (what the README prints, what this test runs in its place: the same command, tiny sizes)
TRAIN = ("python -m m2e_jax.main --config configs/synthetic.py --workdir runs/synthetic",
         ["-m", "m2e_jax.main", "--config", "configs/synthetic.py:test", "--workdir", "runs/synthetic"])
PHOTOS = ("python -m m2e_jax.synthetic --out data/synth --seed 0 --height 128 --width 96 --num_train 1000 "
          "--num_test 100 --contact_sheet synth.png",
          ["-m", "m2e_jax.synthetic", "--out", "data/synth", "--seed", "0", "--height", "128", "--width",
           "96", "--num_train", "1", "--num_test", "4", "--contact_sheet", "synth.png"])
TRY_ON = ("python -m m2e_jax.infer --workdir runs/synthetic --model_image m.jpg --person_image p.jpg "
          "--output out.png",
          ["-m", "m2e_jax.infer", "--workdir", "runs/synthetic", "--model_image", "m.jpg", "--person_image",
           "p.jpg", "--output", "out.png"])
PAIRS = ("--pairs pairs.csv --output_dir out/",
         ["-m", "m2e_jax.infer", "--workdir", "runs/synthetic", "--pairs", "pairs.csv", "--output_dir",
          "out/"])
EVALUATE = ("python -m m2e_jax.evaluate --workdir runs/synthetic --split test",
            ["-m", "m2e_jax.evaluate", "--workdir", "runs/synthetic", "--split", "test"])


def readme_text() -> str:
    with open(README) as f:
        return " ".join(f.read().replace("\\\n", " ").split())


def test_the_readme_prints_the_commands_this_journey_runs():
    text = readme_text()
    for printed, _ in (TRAIN, PHOTOS, TRY_ON, PAIRS, EVALUATE):
        assert printed in text, f"README no longer prints {printed!r}: update tests/test_journey.py"


def run(cwd, argv, log) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the clone itself is on the path
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    log.append((argv, r))
    assert r.returncode == 0, f"{' '.join(argv)} -> {r.returncode}\n{r.stderr[-4000:]}"
    assert "Traceback" not in r.stdout + r.stderr, f"{' '.join(argv)}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A folder laid out as a fresh clone: the repository's packages and configs, nothing else."""
    root = tmp_path_factory.mktemp("clone")
    for name in ("m2e_jax", "configs", "data_prep", "README.md", "requirements.txt"):
        os.symlink(os.path.join(ROOT, name), root / name)
    return root


@pytest.fixture(scope="module")
def journey(clone):
    """Runs the README's commands in order; returns the folder and the person photo's files."""
    log: list = []
    run(clone, TRAIN[1], log)
    run(clone, PHOTOS[1], log)
    images = clone / "data" / "synth" / "test" / "images"
    with open(clone / "data" / "synth" / "test" / "triplets.csv") as f:
        model, person, _ = f.read().splitlines()[1].split(",")
    # A DensePose user's photos: a JPEG with the Detectron IUV PNG beside it, no parsing map.
    for name, stem in (("m", model), ("p", person)):
        Image.open(images / f"{stem}.png").convert("RGB").save(clone / f"{name}.jpg", quality=95)
        shutil.copy(images / f"{stem}_IUV.png", clone / f"{name}_IUV.png")
    run(clone, TRY_ON[1], log)
    shutil.copy(clone / "data" / "synth" / "test" / "pairs.csv", clone / "pairs.csv")
    os.symlink(images, clone / "images")  # the pairs file names photos beside it or in images/
    run(clone, PAIRS[1], log)
    run(clone, EVALUATE[1], log)
    return {"root": clone, "person": person, "images": images, "log": log}


def test_train_try_on_pairs_and_evaluate_run_as_printed(journey):
    assert [argv[1] for argv, _ in journey["log"]] == ["m2e_jax.main", "m2e_jax.synthetic", "m2e_jax.infer",
                                                      "m2e_jax.infer", "m2e_jax.evaluate"]
    root = journey["root"]
    assert (root / "runs" / "synthetic" / "checkpoints" / "6" / "SHA256SUMS").is_file()
    with open(root / "pairs.csv") as f:
        rows = [line.split(",") for line in f.read().splitlines()[1:] if line]
    outs = sorted(os.listdir(root / "out"))
    assert outs == sorted(f"{m}__{p}.png" for m, p in rows), outs
    eval_json = root / "runs" / "synthetic" / "eval" / "metrics_test_step6.json"
    assert eval_json.is_file() and eval_json.with_suffix(".md").is_file()
    table = json.loads(eval_json.read_text())
    assert table["step"] == 6 and {"paired", "unpaired"} <= set(table["metrics"])
    assert re.search(r"wrote .*metrics_test_step6\.json", journey["log"][-1][1].stdout)


def test_densepose_only_try_on_changes_the_garment_and_keeps_the_rest_at_the_photos_size(journey):
    root = journey["root"]
    person = np.asarray(Image.open(root / "p.jpg").convert("RGB"))
    out = np.asarray(Image.open(root / "out.png").convert("RGB"))
    assert out.shape == person.shape == (128, 96, 3)
    iuv = densepose.iuv_from_png_rgb(np.asarray(Image.open(root / "p_IUV.png").convert("RGB")))
    body = densepose.garment_parts_mask(iuv[None], "upper")[0, ..., 0] > 0
    # Where the person's garment is (the synthetic world's ground truth, not given to infer).
    garment = np.asarray(Image.open(journey["images"] / f"{journey['person']}_parse.png")) == 1
    inside = garment & (densepose.dilate(1.0 - body[None, ..., None].astype(np.float32), 2)[0, ..., 0] == 0)
    away = densepose.dilate(body[None, ..., None].astype(np.float32), 6)[0, ..., 0] == 0
    assert inside.sum() > 200 and away.sum() > 2000, (inside.sum(), away.sum())
    change = np.abs(out.astype(np.int16) - person.astype(np.int16)).max(axis=-1)
    assert np.array_equal(out[away], person[away]), f"{np.count_nonzero(change[away])} pixels changed away"
    # Most of the garment changed by more than 24 / 255. P itself resampled through the 32x32 network
    # (what a try-on that returns P looked like before try-on ran at the photo's size) changes 5% of
    # it by that much (median 9 / 255); this 6-step model's try-on, 97% (median 63 / 255).
    changed = np.mean(change[inside] > 24)
    assert changed > 0.5, f"the garment barely changed: {changed:.0%} of its pixels by > 24 / 255"
