"""Everything a user can hand the commands (issue 19.3), as one table of cases: photos (truncated,
not an image, CMYK, grayscale, 16-bit, palette, alpha, an image bomb), DensePose IUV files (I > 24,
wrong size, one channel), pairs CSVs (empty, missing or unknown columns, unknown names, short rows,
not text, BOM, CRLF), checkpoint folders of another project and config files that raise.

A case ends in one of two ways. Refused: one line on stderr naming the file and the problem, exit
code 1, no traceback, nothing written (in a dataset build, where bad records are skipped, one line
per skipped file in build_report.txt and the other records built). Or it works as the user meant it:
a CMYK, 16-bit, palette or alpha photo is a photo; a CSV saved by a spreadsheet (BOM, CRLF) is a CSV.
infer, evaluate and data_prep.build run through their main(argv) in this process; `test_no_traceback
_in_a_real_process` runs one case of each command (and of the trainer) as a subprocess.

Formats: photos as PIL writes PNG / JPEG (CMYK JPEG with the Adobe marker, as Photoshop writes it);
16-bit PNGs and the image bomb written scanline by scanline per the PNG spec (ISO/IEC 15948), since
PIL writes neither; `NAME_IUV.png` as Detectron's infer_simple.py stores it through cv2.imwrite
(data_prep.fixtures.write_iuv_png); `pairs.csv` with the `source,target` header of the folder layout
and `model,person` for infer's --pairs.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import synthetic
from data_prep import build, fixtures
from m2e_jax import checkpoints, evaluate, infer
from m2e_jax.readers import images
from m2e_jax.synthetic import dataset
from tests.test_infer import write_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H = W = 32
BOMB_WH = (16000, 12000)  # 192 Mpixel of RGB zeros: a 0.56 MB PNG that decodes to 576 MB (issue 19.2)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, row: Callable[[int], bytes]) -> bytes:
    """A PNG from raw scanlines (`row(y)`, filter type 0), compressed as a stream: a 16-bit RGB photo
    (PIL cannot write one) or a bomb without ever holding the decoded image."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\0" + row(y)) for y in range(height)) + z.flush()
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


# ---------------------------------------------------------------- photos: (file suffix, writer)
# writer(rgb uint8 [H, W, 3], path) writes the photo; it returns the RGB the photo shows (what any
# decoder must give back), or None for a file that is no usable photo.

def _encoded(rgb: np.ndarray, fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(rgb)
    (img.quantize(64) if mode == "P" else img.convert(mode)).save(buf, format=fmt)
    return buf.getvalue()


def truncated(fmt: str):
    def write(rgb, path):
        data = _encoded(rgb, fmt)
        path.write_bytes(data[: len(data) // 2])
    return write


def saved_as(mode: str, fmt: str = "PNG"):
    """PIL's own conversion of the photo to `mode` is what the file shows (JPEG: decoded back)."""
    def write(rgb, path):
        path.write_bytes(_encoded(rgb, fmt, mode))
        with Image.open(path) as img:  # what this file shows, by PIL's reading of its own mode
            return np.asarray(img.convert("RGBA").convert("RGB") if mode in ("LA", "RGBA") else
                              img.convert("RGB"))
    return write


def gray16(rgb, path):
    v16 = rgb[..., 1].astype(np.uint16) * 257  # 0..255 spread over 0..65535
    Image.fromarray(v16).save(path)  # PIL mode I;16
    return np.repeat(rgb[..., 1:2], 3, axis=-1)


def rgb48(rgb, path):
    wide = rgb.astype(">u2") * 257
    path.write_bytes(raw_png(rgb.shape[1], rgb.shape[0], 16, 2, lambda y: wide[y].tobytes()))
    return rgb


def not_an_image(rgb, path):
    path.write_text("name,score\nperson,0.9\n")


@functools.lru_cache(maxsize=1)
def bomb_png() -> bytes:
    row = bytes(3 * BOMB_WH[0])
    return raw_png(*BOMB_WH, 8, 2, lambda y: row)


def bomb(rgb, path):
    path.write_bytes(bomb_png())


PHOTOS: dict[str, tuple[str, Callable]] = {
    "png truncated": (".png", truncated("PNG")),
    "jpeg truncated": (".jpg", truncated("JPEG")),
    "not an image": (".jpg", not_an_image),
    "jpeg cmyk": (".jpg", saved_as("CMYK", "JPEG")),
    "jpeg grayscale": (".jpg", saved_as("L", "JPEG")),
    "png 16-bit gray": (".png", gray16),
    "png 16-bit rgb": (".png", rgb48),
    "png palette": (".png", saved_as("P")),
    "png alpha": (".png", saved_as("RGBA")),
    "png gray alpha": (".png", saved_as("LA")),
    "image bomb": (".png", bomb),
}
# What refusing each bad photo says (besides the file's name).
PHOTO_ERRORS = {"png truncated": "unreadable image", "jpeg truncated": "unreadable image",
                "not an image": "not an image", "image bomb": "over the limit of"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A workdir with a checkpoint of the test config, photos with DensePose as files, a bomb."""
    root = tmp_path_factory.mktemp("inputs")
    cfg = synthetic.get_config("test")
    cfg.dataset.data_dir = str(root / "data")
    params = write_checkpoint(root / "work", cfg, 1, seed=3)
    # The same networks trained on records that were never built here (a tfds config).
    tfds_cfg = synthetic.get_config("test")
    tfds_cfg.dataset.update(source="tfds", data_dir=str(root / "no_records"))
    write_checkpoint(root / "tfds_work", tfds_cfg, 1, params)
    # Another project's checkpoints: orbax with some other model's tree, and a flax msgpack file.
    with checkpoints.Checkpointer(str(root / "other" / "checkpoints"), async_save=False) as ck:
        ck.save(10, {"params": {"Dense_0": {"kernel": np.ones((4, 2), np.float32)}}}, cfg)
    (root / "flax" / "checkpoints").mkdir(parents=True)
    (root / "flax" / "checkpoints" / "checkpoint_1000").write_bytes(b"\x81\xa6params\x80")
    (root / "not_a_workdir").mkdir()
    (root / "not_a_workdir" / "notes.txt").write_text("hello")
    (root / "raises.py").write_text("import ml_collections\nraise RuntimeError('no GPU here')\n")
    (root / "no_get_config.py").write_text("X = 1\n")
    dataset.write_dataset(root / "syn", 0, H, W, 0, 2)
    syn = root / "syn" / "test" / "images"
    names = sorted(p.stem for p in syn.glob("*.png") if not p.stem.endswith(("_IUV", "_parse", "_INDS")))
    photos = {}
    for role, name in zip(("m", "p"), names[:2]):
        photos[role] = (np.asarray(Image.open(syn / f"{name}.png").convert("RGB")), syn / f"{name}_IUV.png")
    return {"root": root, "workdir": str(root / "work"), "photos": photos}


def put_pair(world, d: Path, person: str | None = None) -> tuple[Path, Path]:
    """m.png + m_IUV.png and p<suffix> + p_IUV.png in `d`; the person photo as PHOTOS[person]."""
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for role in ("m", "p"):
        rgb, iuv = world["photos"][role]
        suffix, write = PHOTOS[person] if role == "p" and person else (".png", None)
        path = d / f"{role}{suffix}"
        if write is None:
            fixtures.write_rgb(path, rgb)
        else:
            write(rgb, path)
        shutil.copy(iuv, d / f"{role}_IUV.png")
        paths.append(path)
    return paths[0], paths[1]


# ---------------------------------------------------------------- the table

@dataclasses.dataclass(frozen=True)
class Case:
    command: str  # "infer" | "evaluate" | "build"
    setup: Callable  # setup(world, d: Path) -> argv (written files live in d)
    refused: tuple[str, ...] = ()  # words of the one error line; () = the command works
    output: str = "out"  # what must not exist after a refusal (relative to d), or exist after success


def infer_single(person: str):
    def setup(world, d):
        m, p = put_pair(world, d, person)
        return ["--workdir", world["workdir"], "--model_image", str(m), "--person_image", str(p),
                "--output", str(d / "out" / "o.png")]
    return setup


def infer_iuv(kind: str):
    def setup(world, d):
        m, p = put_pair(world, d)
        iuv = np.asarray(Image.open(d / "p_IUV.png"))[..., ::-1]  # back to (I, U, V)
        if kind == "part 25":
            bad = iuv.copy()
            bad[H // 2, W // 2, 0] = 25
            fixtures.write_iuv_png(d / "p_IUV.png", bad)
        elif kind == "wrong size":
            fixtures.write_iuv_png(d / "p_IUV.png", iuv[:, : W - 4])
        elif kind == "one channel":
            Image.fromarray(iuv[..., 0], "L").save(d / "p_IUV.png")
        elif kind == "missing":
            os.remove(d / "p_IUV.png")
        return ["--workdir", world["workdir"], "--model_image", str(m), "--person_image", str(p),
                "--output", str(d / "out" / "o.png")]
    return setup


def infer_pairs(text: str | bytes):
    def setup(world, d):
        put_pair(world, d)
        data = text.encode("utf-8") if isinstance(text, str) else text
        (d / "pairs.csv").write_bytes(data)
        return ["--workdir", world["workdir"], "--pairs", str(d / "pairs.csv"),
                "--output_dir", str(d / "out")]
    return setup


def with_checkpoint(command: str, folder: str, *extra: str):
    def setup(world, d):
        m, p = put_pair(world, d)
        argv = ["--workdir", str(world["root"] / folder), *extra]
        if command == "infer":
            argv += ["--model_image", str(m), "--person_image", str(p), "--output", str(d / "out" / "o.png")]
        else:
            argv += ["--output_dir", str(d / "out"), "--num_examples", "2"]
        return argv
    return setup


def with_config(command: str, name: str):
    def setup(world, d):
        argv = with_checkpoint(command, "work")(world, d)
        return argv + ["--config", str(world["root"] / name)]
    return setup


def build_folder(pairs_csv: bytes):
    """The folder layout with 4 good photos (a1, a2, b1, b2) and this train/pairs.csv."""
    def setup(world, d):
        images_dir = d / "in" / "train" / "images"
        images_dir.mkdir(parents=True)
        for i, name in enumerate(("a1", "a2", "b1", "b2")):
            rgb, iuv = world["photos"]["mp"[i % 2]]
            fixtures.write_rgb(images_dir / f"{name}.png", rgb)
            shutil.copy(iuv, images_dir / f"{name}_IUV.png")
        (d / "in" / "train" / "pairs.csv").write_bytes(pairs_csv)
        return ["--dataset", "folder", "--manual_dir", str(d / "in"), "--data_dir", str(d / "out"),
                "--height", str(H), "--width", str(W), "--workers", "0"]
    return setup


CASES: dict[str, Case] = {
    **{f"infer: photo {name}": Case("infer", infer_single(name), (f"p{PHOTOS[name][0]}", PHOTO_ERRORS[name])
                                    if name in PHOTO_ERRORS else ())
       for name in PHOTOS},
    "infer: IUV with I > 24": Case("infer", infer_iuv("part 25"), ("p_IUV.png", "25")),
    "infer: IUV of another size": Case("infer", infer_iuv("wrong size"), ("p_IUV.png", "IUV is 32x28")),
    "infer: IUV of one channel": Case("infer", infer_iuv("one channel"), ("p_IUV.png", "3-channel")),
    "infer: no IUV beside the photo": Case("infer", infer_iuv("missing"), ("p_IUV.png", "--person_iuv")),
    "infer: pairs empty": Case("infer", infer_pairs(""), ("pairs.csv", "empty")),
    "infer: pairs header only": Case("infer", infer_pairs("model,person\n"), ("pairs.csv", "no pairs")),
    "infer: pairs missing column": Case("infer", infer_pairs("model\nm\n"), ("pairs.csv", "model,person")),
    "infer: pairs unknown columns": Case("infer", infer_pairs("foo,bar\nm,p\n"),
                                         ("pairs.csv", "model,person")),
    "infer: pairs unknown name": Case("infer", infer_pairs("model,person\nm,nobody\n"),
                                      ("pairs.csv:2", "'nobody' not found")),
    "infer: pairs naming a missing file": Case("infer", infer_pairs("model,person\nm,gone/p.jpg\n"),
                                               ("pairs.csv:2", "'gone/p.jpg' not found")),
    "infer: pairs short row": Case("infer", infer_pairs("model,person\nm\n"), ("pairs.csv:2", "columns")),
    "infer: pairs not text": Case("infer", infer_pairs(b"\x89PNG\r\n\x1a\n\xff\xfe\x00"),
                                  ("pairs.csv", "UTF-8")),
    "infer: pairs BOM": Case("infer", infer_pairs("\ufeffmodel,person\nm,p\n")),
    "infer: pairs CRLF": Case("infer", infer_pairs("model,person\r\nm,p\r\n")),
    "infer: checkpoint of another project": Case("infer", with_checkpoint("infer", "other"),
                                                 ("other", "not an m2e_jax try-on checkpoint")),
    "infer: flax checkpoint": Case("infer", with_checkpoint("infer", "flax"),
                                   ("flax", "no m2e_jax checkpoint there")),
    "infer: not a workdir": Case("infer", with_checkpoint("infer", "not_a_workdir"),
                                 ("not_a_workdir", "no such checkpoint directory")),
    "infer: config raises on import": Case("infer", with_config("infer", "raises.py"),
                                           ("raises.py", "RuntimeError: no GPU here")),
    "infer: config without get_config": Case("infer", with_config("infer", "no_get_config.py"),
                                             ("no_get_config.py", "get_config")),
    "evaluate: checkpoint of another project": Case("evaluate", with_checkpoint("evaluate", "other"),
                                                    ("other", "not an m2e_jax try-on checkpoint")),
    "evaluate: flax checkpoint": Case("evaluate", with_checkpoint("evaluate", "flax"),
                                      ("flax", "no m2e_jax checkpoint there")),
    "evaluate: config raises on import": Case("evaluate", with_config("evaluate", "raises.py"),
                                              ("raises.py", "RuntimeError: no GPU here")),
    "evaluate: records not built": Case("evaluate", with_checkpoint("evaluate", "tfds_work"),
                                        ("no_records", "no built dataset")),
    "build: pairs empty": Case("build", build_folder(b""), ("pairs.csv", "missing column")),
    "build: pairs missing column": Case("build", build_folder(b"source\na1\n"), ("pairs.csv", "target")),
    "build: pairs BOM and CRLF": Case("build", build_folder("\ufeffsource,target\r\na1,a2\r\nb1,b2\r\n"
                                                            .encode())),
}


def written(command: str, out: Path) -> bool:
    """Whether a command left anything a reader would take for output in `out` (a build: records or
    the dataset_info.json that marks a finished build; TFDS's empty scaffolding does not count)."""
    files = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    if command == "build":
        return any(p.name == "dataset_info.json" or ".array_record" in p.name for p in files)
    return bool(files)


def run(command: str, argv: list[str]) -> int:
    return {"infer": infer.main, "evaluate": evaluate.main, "build": build.main}[command](argv)


@pytest.mark.parametrize("name", list(CASES))
def test_input_case(world, tmp_path, capsys, name):
    case = CASES[name]
    argv = case.setup(world, tmp_path)
    capsys.readouterr()
    rc = run(case.command, argv)
    err = capsys.readouterr().err
    out = tmp_path / case.output
    if case.refused:
        lines = err.strip().splitlines()
        assert rc == 1 and len(lines) == 1, (rc, err[-3000:])
        assert "Traceback" not in err and "error: " in lines[0], err
        for word in case.refused:
            assert word in lines[0], (word, lines[0])
        assert not written(case.command, out), sorted(out.rglob("*"))
    else:
        assert rc == 0, err[-3000:]
        assert any(p.is_file() for p in out.rglob("*")), name


@pytest.mark.parametrize("name", list(PHOTOS))
def test_photo_decodes_to_what_it_shows(tmp_path, name):
    """The readers behind every command: a usable photo decodes to the RGB it shows, whatever its
    mode and depth (a 16-bit photo is scaled, not clipped to white); a bad one is one ReadError line."""
    rng = np.random.default_rng(0)
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (8, 6, 3), dtype=np.uint8), 4, 0), 4, 1)  # JPEG-friendly
    suffix, write = PHOTOS[name]
    path = tmp_path / f"photo{suffix}"
    shows = write(rgb, path)
    if name in PHOTO_ERRORS:
        with pytest.raises(images.ReadError) as e:
            images.read_rgb(path)
        assert str(path) in str(e.value) and PHOTO_ERRORS[name] in str(e.value) and "\n" not in str(e.value)
        return
    got = images.read_rgb(path)
    assert got.dtype == np.uint8 and got.shape == (32, 24, 3)
    np.testing.assert_array_equal(got, shows)


def test_build_skips_each_bad_photo_with_one_report_line(world, tmp_path):
    """One folder, one pair per photo case (the bad file is the pair's target): every bad photo is one
    line of build_report.txt naming it, every usable one becomes a record."""
    from m2e_jax import tfds_source

    images_dir = tmp_path / "in" / "train" / "images"
    images_dir.mkdir(parents=True)
    rows = ["source,target"]
    for i, name in enumerate(PHOTOS):
        put_pair(world, tmp_path / "tmp", name)
        for role, new in (("m", f"case{i}_a"), ("p", f"case{i}_b")):
            photo = next((tmp_path / "tmp").glob(f"{role}.*"))
            shutil.move(photo, images_dir / f"{new}{photo.suffix}")
            shutil.move(tmp_path / "tmp" / f"{role}_IUV.png", images_dir / f"{new}_IUV.png")
        rows.append(f"case{i}_a,case{i}_b")
    (tmp_path / "in" / "train" / "pairs.csv").write_text("\n".join(rows) + "\n")
    path = build.build("folder", tmp_path / "in", tmp_path / "out", H, W, num_unpaired=0, workers=0)
    report = Path(path, "build_report.txt").read_text().splitlines()[1:]
    bad = [i for i, name in enumerate(PHOTOS) if name in PHOTO_ERRORS]
    assert len(report) == len(bad), report
    for i, line in zip(bad, sorted(report, key=lambda s: int(re.search(r"case(\d+)_b", s).group(1)))):
        name = list(PHOTOS)[i]
        assert f"case{i}_b{PHOTOS[name][0]}" in line and PHOTO_ERRORS[name] in line, (name, line)
    src = tfds_source.load_source(tmp_path / "out", f"folder_{H}x{W}", "train", with_meta=True)
    assert len(src) == len(PHOTOS) - len(bad)


def test_build_pairs_with_unknown_names_skip_those_rows(world, tmp_path, capsys):
    argv = build_folder(b"source,target\na1,a2\nb1,nobody\n")(world, tmp_path)
    assert build.main(argv) == 0, capsys.readouterr().err
    report = next((tmp_path / "out").rglob("build_report.txt")).read_text().splitlines()[1:]
    assert len(report) == 1 and "pairs.csv" in report[0] and "nobody" in report[0], report


SUBPROCESS = {  # command module -> the case it runs (the trainer: its config raising on import)
    "m2e_jax.infer": "infer: photo image bomb",
    "m2e_jax.evaluate": "evaluate: checkpoint of another project",
    "data_prep.build": "build: pairs missing column",
    "m2e_jax.main": None,
}


@pytest.mark.slow
@pytest.mark.parametrize("module", list(SUBPROCESS))
def test_no_traceback_in_a_real_process(world, tmp_path, module):
    name = SUBPROCESS[module]
    if name is None:
        argv, words = ["--config", str(world["root"] / "raises.py"), "--workdir", str(tmp_path / "out")], \
            ("raises", "RuntimeError: no GPU here")
    else:
        argv, words = CASES[name].setup(world, tmp_path), CASES[name].refused
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr
    assert all(w in lines[0] for w in words), lines
    assert not written(module.split(".")[-1], tmp_path / "out")
