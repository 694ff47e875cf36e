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
import urllib.request

import numpy as np
import pytest
from PIL import Image

from m2e_jax import densepose
from tests import processes

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
    # the clone itself is on the path, not the repository
    env = processes.cpu_env(1, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
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


@pytest.mark.slow
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


# ------------------------------------------------------------- your own photos, end to end
#
# The README's "Train on your own photos": folder layout -> data_prep.build -> train with
# configs/folder.py -> evaluate -> infer -> the web page. The photos come from draw_figure below, not
# from the synthetic world's renderer.

OWN_BUILD = ("python -m data_prep.build --dataset folder --manual_dir data/my_photos --data_dir data/my_tfds "
             "--height 64 --width 48",
             ["-m", "data_prep.build", "--dataset", "folder", "--manual_dir", "data/my_photos", "--data_dir",
              "data/my_tfds", "--height", "32", "--width", "32"])
OWN_TRAIN = ("python -m m2e_jax.main --config configs/folder.py --workdir runs/folder "
             "--config.dataset.data_dir=data/my_tfds",
             ["-m", "m2e_jax.main", "--config", "configs/folder.py:test", "--workdir", "runs/folder",
              "--config.dataset.data_dir=data/my_tfds"])
OWN_EVALUATE = ("python -m m2e_jax.evaluate --workdir runs/folder --split test",
                ["-m", "m2e_jax.evaluate", "--workdir", "runs/folder", "--split", "test"])
OWN_TRY_ON = ("python -m m2e_jax.infer --workdir runs/folder --model_image model.jpg "
              "--person_image person.jpg --output tryon.png",
              ["-m", "m2e_jax.infer", "--workdir", "runs/folder", "--model_image", "model.jpg",
               "--person_image", "person.jpg", "--output", "tryon.png"])
OWN_DEMO = ("python -m m2e_jax.demo --workdir runs/folder",
            ["-m", "m2e_jax.demo", "--workdir", "runs/folder", "--port", "0"])  # any free port here
OWN_STEPS = 6  # configs/folder.py:test (configs/synthetic.py:test's model, 32x32: 2 + 1 + 1 + 2 steps)
PHOTO_H, PHOTO_W = 100, 72  # not the records' shape, so the build letterboxes

# Each figure part: DensePose part label (densepose.md: 2 torso front, 15/16 upper arm left/right,
# 19/20 lower arm left/right, 7/8 upper leg right/left, 11/12 lower leg right/left, 23 head) and what
# covers it.
_PARTS = (("head", 23, "skin"), ("torso", 2, "shirt"), ("upper_arm_r", 16, "shirt"),
          ("upper_arm_l", 15, "shirt"), ("lower_arm_r", 20, "skin"), ("lower_arm_l", 19, "skin"),
          ("upper_leg_r", 7, "trousers"), ("upper_leg_l", 8, "trousers"),
          ("lower_leg_r", 11, "trousers"), ("lower_leg_l", 12, "trousers"))


def _boxes(pose: int, shift: int) -> dict[str, tuple[int, int, int, int]]:
    """(top, left, bottom, right) of each part: pose 0 arms down beside the torso, pose 1 arms out."""
    c = PHOTO_W // 2 + shift
    boxes = {"head": (8, c - 7, 24, c + 7), "torso": (25, c - 11, 56, c + 11),
             "upper_leg_r": (57, c - 10, 76, c - 1), "upper_leg_l": (57, c + 1, 76, c + 10),
             "lower_leg_r": (77, c - 10, 95, c - 1), "lower_leg_l": (77, c + 1, 95, c + 10)}
    if pose == 0:
        boxes |= {"upper_arm_r": (26, c - 17, 42, c - 12), "upper_arm_l": (26, c + 12, 42, c + 17),
                  "lower_arm_r": (43, c - 17, 57, c - 12), "lower_arm_l": (43, c + 12, 57, c + 17)}
    else:
        boxes |= {"upper_arm_r": (26, c - 24, 32, c - 12), "upper_arm_l": (26, c + 12, 32, c + 24),
                  "lower_arm_r": (26, c - 30, 32, c - 25), "lower_arm_l": (26, c + 25, 32, c + 30)}
    return boxes


def draw_figure(colours: dict[str, np.ndarray], pose: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """A drawn figure (boxes on a grey wall) and its DensePose: uint8 RGB `[H, W, 3]` and (I, U, V)
    `[H, W, 3]`, U and V running 0..255 across each part's box, as DensePose's chart coordinates run
    across a part. The shirt carries stripes fixed in V, so it looks the same on the body in both
    poses (what the UV warp carries from one photo to the other)."""
    image = np.full((PHOTO_H, PHOTO_W, 3), 200, np.uint8)
    iuv = np.zeros((PHOTO_H, PHOTO_W, 3), np.uint8)
    boxes = _boxes(pose, shift)
    for name, label, cover in _PARTS:
        top, left, bottom, right = boxes[name]
        rows, cols = np.mgrid[top:bottom, left:right]
        u = ((cols - left) * 255 // max(right - left - 1, 1)).astype(np.uint8)
        v = ((rows - top) * 255 // max(bottom - top - 1, 1)).astype(np.uint8)
        colour = colours[cover].astype(np.float32)
        shade = np.where((v // 32) % 2 == 1, 0.6, 1.0)[..., None] if cover == "shirt" else 1.0
        image[top:bottom, left:right] = np.clip(colour * shade, 0, 255).astype(np.uint8)
        iuv[top:bottom, left:right] = np.stack([np.full_like(u, label), u, v], -1)
    return image, iuv


def write_own_photos(root, seed: int = 0) -> dict[str, list[str]]:
    """A user's folder dataset (README's layout): `<split>/images/NAME.jpg` + Detectron `NAME_IUV.png`,
    `<split>/pairs.csv` (both directions of each figure's two poses) and, in test, `triplets.csv` with
    drawn ground truth (a figure in another's shirt). No parsing maps: DensePose alone.

    The IUV files are written as Detectron's `infer_simple.py` writes them: the [I, U, V] array saved by
    `cv2.imwrite`, which stores channel 0 as Blue (densepose.md: "read with PIL (RGB order) you get
    [V, U, I]"); fixtures.write_iuv_png writes exactly that. Returns {split: photo names}."""
    from data_prep import fixtures

    rng = np.random.default_rng(seed)
    names: dict[str, list[str]] = {}
    for split, count in (("train", 10), ("test", 3)):
        images = root / split / "images"
        images.mkdir(parents=True)
        people = [{k: rng.integers(30, 230, 3) for k in ("skin", "shirt", "trousers")} for _ in range(count)]

        def save(name: str, colours: dict, pose: int, shift: int, images=images) -> None:
            image, iuv = draw_figure(colours, pose, shift)
            Image.fromarray(image).save(images / f"{name}.jpg", quality=92)
            fixtures.write_iuv_png(images / f"{name}_IUV.png", iuv)

        rows = []
        for k, colours in enumerate(people):
            for pose in (0, 1):
                save(f"fig{k:02d}_{pose}", colours, pose, int(rng.integers(-4, 5)))
            rows += [f"fig{k:02d}_0,fig{k:02d}_1", f"fig{k:02d}_1,fig{k:02d}_0"]
        (root / split / "pairs.csv").write_text("source,target\n" + "\n".join(rows) + "\n")
        if split == "test":  # figure k + 1 in pose 1 wearing figure k's shirt
            triplets = []
            for k in range(count - 1):
                other = dict(people[k + 1], shirt=people[k]["shirt"])
                save(f"fig{k + 1:02d}_1_in_{k:02d}", other, 1, 0)
                triplets.append(f"fig{k:02d}_0,fig{k + 1:02d}_1,fig{k + 1:02d}_1_in_{k:02d}")
            (root / split / "triplets.csv").write_text("model,person,target\n" + "\n".join(triplets) + "\n")
        names[split] = sorted(p.stem for p in images.glob("*.jpg"))
    return names


def test_the_readme_prints_the_own_photos_road():
    text = readme_text()
    for printed, _ in (OWN_BUILD, OWN_TRAIN, OWN_EVALUATE, OWN_TRY_ON, OWN_DEMO):
        assert printed in text, f"README no longer prints {printed!r}: update tests/test_journey.py"


@pytest.mark.slow
def test_own_photos_build_train_evaluate_try_on_and_serve(clone, tmp_path):
    """Every command as printed, relative paths, in the clone: build -> train -> evaluate -> infer ->
    the web page (one try-on of two test photos through its API)."""
    log: list = []
    names = write_own_photos(clone / "data" / "my_photos")
    assert sum(len(v) for v in names.values()) >= 24
    run(clone, OWN_BUILD[1], log)
    report = (clone / "data" / "my_tfds" / "m2e_dataset" / "folder_32x32" / "1.0.0" / "build_report.txt")
    assert report.read_text().startswith("0 record(s) skipped"), report.read_text()
    run(clone, OWN_TRAIN[1], log)
    assert (clone / "runs" / "folder" / "checkpoints" / str(OWN_STEPS) / "SHA256SUMS").is_file()
    run(clone, OWN_EVALUATE[1], log)
    eval_json = clone / "runs" / "folder" / "eval" / f"metrics_test_step{OWN_STEPS}.json"
    table = json.loads(eval_json.read_text())
    assert {"paired", "unpaired"} <= set(table["metrics"])
    images = clone / "data" / "my_photos" / "test" / "images"
    for role, stem in (("model", "fig00_0"), ("person", "fig01_1")):
        shutil.copy(images / f"{stem}.jpg", clone / f"{role}.jpg")
        shutil.copy(images / f"{stem}_IUV.png", clone / f"{role}_IUV.png")
    run(clone, OWN_TRY_ON[1], log)
    assert np.asarray(Image.open(clone / "tryon.png")).shape == (PHOTO_H, PHOTO_W, 3)
    env = processes.cpu_env(1, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    err = open(tmp_path / "demo_stderr.txt", "w")
    proc = subprocess.Popen([sys.executable, *OWN_DEMO[1]], cwd=clone, env=env, stdout=subprocess.PIPE,
                            stderr=err, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("m2e_jax.demo: serving "), (line, (tmp_path / "demo_stderr.txt").read_text())
        address = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(address, timeout=60) as r:
            assert "M2E-TON try-on" in r.read().decode()
        request = json.dumps({"model": {"pick": 0}, "person": {"pick": 1}}).encode()
        with urllib.request.urlopen(urllib.request.Request(address.rstrip("/") + "/api/tryon", request,
                                                           {"Content-Type": "application/json"}),
                                    timeout=120) as r:
            reply = json.loads(r.read())
        assert "error" not in reply, reply
        assert reply["result"].startswith("data:image/png;base64,")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        err.close()
