"""Bad data, fuzzed (hypothesis): corrupt PNGs, truncated pickles, IUV maps of the wrong size, bit
depth or values, photos with no person and empty folders, fed to the dataset builder and to the
inference command. Every case ends in a one-line error or a skipped-record report line naming the
file, never a traceback, and never leaves output that looks complete.
"""

import io
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from configs import synthetic
from data_prep import build, fixtures
from m2e_jax import checkpointing, checkpoints, infer, tfds_source
from m2e_jax.synthetic import dataset

H, W = 32, 24
FUZZ = settings(max_examples=6, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# One corruption of a PNG file's bytes or of an IUV map's content, as (kind, parameter).
CORRUPTIONS = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 200)),  # cut after n bytes
    st.tuples(st.just("garbage"), st.binary(min_size=0, max_size=64)),
    st.tuples(st.just("iuv_size"), st.tuples(st.integers(4, 40), st.integers(4, 40)).filter(
        lambda hw: hw != (H, W))),
    st.tuples(st.just("iuv_part"), st.integers(25, 255)),  # part label out of 0..24
    st.tuples(st.just("iuv_16bit"), st.integers(256, 65535)),
    st.tuples(st.just("no_person"), st.integers(0, 3)),  # that many body pixels only
)


def corrupt(path: Path, kind: str, arg, iuv: np.ndarray) -> None:
    """Damages the IUV PNG at `path` (a valid map `iuv` of the photo's size)."""
    if kind == "truncate":
        path.write_bytes(path.read_bytes()[:arg])
    elif kind == "garbage":
        path.write_bytes(arg)
    elif kind == "iuv_size":
        fixtures.write_iuv_png(path, fixtures.person_iuv(*arg, (1, 1, arg[0] - 1, arg[1] - 1)))
    elif kind == "iuv_part":
        bad = iuv.copy()
        bad[H // 2, W // 2, 0] = arg
        fixtures.write_iuv_png(path, bad)
    elif kind == "iuv_16bit":
        buf = io.BytesIO()
        Image.fromarray(np.full((H, W), arg, np.uint16)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
    elif kind == "no_person":
        bad = np.zeros_like(iuv)
        bad[:1, :arg, 0] = 1
        fixtures.write_iuv_png(path, bad)
    else:
        raise AssertionError(kind)


def photo(d: Path, name: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fixtures.write_rgb(d / f"{name}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    iuv = fixtures.person_iuv(H, W, (4, 3, H - 3, W - 4), seed=seed)
    fixtures.write_iuv_png(d / f"{name}_IUV.png", iuv)
    return iuv


def folder(root: Path) -> dict[str, np.ndarray]:
    d = root / "train" / "images"
    d.mkdir(parents=True)
    iuvs = {n: photo(d, n, i) for i, n in enumerate(["a1", "a2", "b1", "b2"])}
    (root / "train" / "pairs.csv").write_text("source,target\na1,a2\nb1,b2\n")
    return iuvs


def report_lines(path: str) -> list[str]:
    return Path(path, "build_report.txt").read_text().splitlines()[1:]


@FUZZ
@given(corruption=CORRUPTIONS, target=st.sampled_from(["image", "iuv"]))
def test_builder_skips_each_corrupt_record_with_one_report_line(tmp_path_factory, corruption, target):
    root = tmp_path_factory.mktemp("build")
    iuvs = folder(root / "in")
    name = "b1_IUV.png" if target == "iuv" else "b1.png"
    kind, arg = corruption
    if target == "image" and kind.startswith(("iuv", "no_person")):
        kind, arg = "garbage", b"\x89PNG\r\n\x1a\n" + bytes(8)
    corrupt(root / "in" / "train" / "images" / name, kind, arg, iuvs["b1"])
    path = build.build("folder", root / "in", root / "out", H, W, num_unpaired=0, workers=0)
    src = tfds_source.load_source(root / "out", f"folder_{H}x{W}", "train", with_meta=True)
    assert sorted((r["model_id"], r["person_id"]) for r in src) == [("a1", "a2")]  # b1's pair skipped
    lines = report_lines(path)
    assert len(lines) == 1 and lines[0].startswith("train: ") and name in lines[0], (kind, lines)
    assert "Traceback" not in lines[0]


def test_builder_refuses_empty_and_missing_folders_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_images" / "train").mkdir(parents=True)
    for manual in ("empty", "no_images", "missing"):
        rc = build.main(["--dataset", "folder", "--manual_dir", str(tmp_path / manual), "--data_dir",
                         str(tmp_path / "out"), "--height", str(H), "--width", str(W), "--workers", "0"])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and err.startswith("error: ") and "\n" not in err and manual in err, (manual, err)
        assert "Traceback" not in err
    with pytest.raises(FileNotFoundError, match="no built dataset"):
        tfds_source.load_source(tmp_path / "out", f"folder_{H}x{W}", "train")


def test_builder_truncated_dump_only_is_one_line_and_no_dataset(tmp_path, capsys):
    """Every photo's DensePose is in a truncated dump: one error line naming it, no dataset left."""
    folder(tmp_path / "in")
    for n in ("a1", "a2", "b1", "b2"):
        os.remove(tmp_path / "in" / "train" / "images" / f"{n}_IUV.png")
    fixtures.write_torch_dump(tmp_path / "in" / "train" / "densepose.pkl", [])
    raw = (tmp_path / "in" / "train" / "densepose.pkl").read_bytes()
    (tmp_path / "in" / "train" / "densepose.pkl").write_bytes(raw[: len(raw) // 3])
    rc = build.main(["--dataset", "folder", "--manual_dir", str(tmp_path / "in"), "--data_dir",
                     str(tmp_path / "out"), "--height", str(H), "--width", str(W), "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error: ") and "\n" not in err, err
    assert "no usable examples" in err and "densepose.pkl: not a torch.save zip archive" in err, err
    with pytest.raises(FileNotFoundError, match="no built dataset"):
        tfds_source.load_source(tmp_path / "out", f"folder_{H}x{W}", "train")


# ---------------------------------------------------------------- inference

@pytest.fixture(scope="module")
def infer_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    cfg = synthetic.get_config("test")
    cfg.dataset.data_dir = str(root / "data")
    shapes = checkpointing.generator_shapes(cfg.model)
    params = jax.tree.map(lambda s: np.full(s.shape, 0.01, s.dtype), shapes)
    with checkpoints.Checkpointer(str(root / "work" / "checkpoints"), async_save=False) as ck:
        ck.save(1, {"step": np.int32(1), "params": params}, cfg)
    dataset.write_dataset(root / "syn", 0, 32, 32, 0, 2)
    images = sorted((root / "syn" / "test" / "images").glob("*.png"))
    photos = [p for p in images if not p.stem.endswith(("_IUV", "_parse", "_INDS"))]
    return {"root": root, "workdir": str(root / "work"), "photos": photos}


@FUZZ
@given(corruption=CORRUPTIONS, target=st.sampled_from(["model_image", "person_iuv"]))
def test_infer_bad_input_is_one_line_and_writes_nothing(infer_world, tmp_path_factory, capsys, corruption,
                                                        target):
    work = tmp_path_factory.mktemp("case")
    m, p = infer_world["photos"][:2]
    files = {"model_image": work / "m.png", "person_image": work / "p.png",
             "person_iuv": work / "p_IUV.png"}
    shutil.copy(m, files["model_image"])
    shutil.copy(p, files["person_image"])
    shutil.copy(p.with_name(p.stem + "_IUV.png"), files["person_iuv"])
    shutil.copy(m.with_name(m.stem + "_IUV.png"), work / "m_IUV.png")
    kind, arg = corruption
    if target == "model_image" and kind.startswith(("iuv", "no_person")):
        kind, arg = "truncate", 40
    corrupt(files[target], kind, arg, np.asarray(Image.open(files["person_iuv"])))
    out = work / "out" / "o.png"
    capsys.readouterr()
    argv = ["--workdir", infer_world["workdir"], "--output", str(out)]
    argv += [f"--{k}={v}" for k, v in files.items()]
    rc = infer.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 1, (kind, target, err)
    assert err.startswith("m2e_jax.infer: error: ") and "\n" not in err, err
    assert files[target].name in err, (kind, err)
    assert not out.exists() and not (out.parent.exists() and os.listdir(out.parent))
