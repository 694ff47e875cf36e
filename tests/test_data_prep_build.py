"""The TFDS build end to end on tiny fixtures: exact round trips, letterboxing, the bad-record report,
--strict, dumps, the synthetic world and DeepFashion trees."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from data_prep import build, fixtures
from m2e_jax import data_schema, tfds_source
from m2e_jax.readers import photos

H, W = 32, 24


def _photo(images_dir: Path, name: str, seed: int, iuv=None, parse=True, size=(H, W)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    fixtures.write_rgb(images_dir / f"{name}.png", image)
    if iuv is None:
        iuv = fixtures.person_iuv(*size, (4, 3, size[0] - 3, size[1] - 4), seed=seed)
    if iuv is not False:
        fixtures.write_iuv_png(images_dir / f"{name}_IUV.png", iuv)
    p = None
    if parse:
        p = np.where(iuv[..., 0] > 0, 1 + (np.arange(size[0]) >= size[0] // 2)[:, None], 0).astype(np.uint8)
        fixtures.write_label_png(images_dir / f"{name}_parse.png", p)
    return {"image": image, "iuv": iuv, "parse": p}


def _csv(path: Path, header: str, rows):
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))


def _folder(root: Path) -> dict[str, dict]:
    d = root / "train" / "images"
    d.mkdir(parents=True)
    photos = {n: _photo(d, n, i) for i, n in enumerate(["a1", "a2", "b1", "b2", "c1"])}
    _csv(root / "train" / "pairs.csv", "source,target", [("a1", "a2"), ("b1", "b2")])
    _csv(root / "train" / "triplets.csv", "model,person,target", [("a1", "b1", "c1")])
    return photos


def _build(manual, data, config_source="folder", **kw):
    kw.setdefault("height", H)
    kw.setdefault("width", W)
    return build.build(config_source, manual, data, kw.pop("height"), kw.pop("width"), **kw)


def test_folder_round_trip_exact(tmp_path):
    photos = _folder(tmp_path / "in")
    path = _build(tmp_path / "in", tmp_path / "out", num_unpaired=3, seed=5)
    src = tfds_source.load_source(tmp_path / "out", f"folder_{H}x{W}", "train", with_meta=True)
    recs = {r["key"]: r for r in src}
    assert len(recs) == 2 + 1 + 3
    for key, r in recs.items():
        data_schema.validate_example(r, H, W, key)
        for role in ("model", "person"):
            p = photos[r[f"{role}_id"]]
            np.testing.assert_array_equal(r[f"{role}_image"], p["image"])
            np.testing.assert_array_equal(r[f"{role}_iuv"], p["iuv"])
            np.testing.assert_array_equal(r[f"{role}_mask"][..., 0], p["parse"] == 1)
            np.testing.assert_array_equal(r[f"{role}_transform"], [1, 0, 0])
        if key.startswith("p|"):
            assert (r["paired"], r["has_target"]) == (1, 1)
            assert r["model_id"][0] == r["person_id"][0]
            np.testing.assert_array_equal(r["target_image"], r["person_image"])
        elif key.startswith("t|"):
            assert (r["paired"], r["has_target"], r["target_id"]) == (0, 1, "c1")
            np.testing.assert_array_equal(r["target_image"], photos["c1"]["image"])
        else:
            assert (r["paired"], r["has_target"]) == (0, 0) and not r["target_image"].any()
            assert r["model_id"][0] != r["person_id"][0]  # different items
    # the trainer's paired/unpaired split, read without decoding images, agrees record by record
    np.testing.assert_array_equal(src.paired_flags(chunk=4), [bool(r["paired"]) for r in src])
    assert src.paired_flags().sum() == 2
    report = json.loads(Path(path, "build_report.json").read_text())
    assert report["skipped"] == [] and report["counts"]["examples"] == {"train": 6}
    # a second build reuses, a rebuild with another seed draws other unpaired examples
    _build(tmp_path / "in", tmp_path / "out2", num_unpaired=3, seed=6)
    other = tfds_source.load_source(tmp_path / "out2", f"folder_{H}x{W}", "train", with_meta=True)
    unp = lambda s: {r["key"] for r in s if r["key"].startswith("u|")}
    assert unp(other) != unp(src)


def test_letterbox_resize_keeps_labels(tmp_path):
    photos = _folder(tmp_path / "in")
    _build(tmp_path / "in", tmp_path / "out", height=40, width=40, num_unpaired=0)
    (r,) = [r for r in tfds_source.load_source(tmp_path / "out", "folder_40x40", "train", with_meta=True)
            if r["model_id"] == "a1" and r["paired"]]
    np.testing.assert_allclose(r["model_transform"], [1.25, 0, 5])  # 32x24 -> 40x30, 5 px each side
    iuv = r["model_iuv"]
    assert not iuv[:, :5].any() and not iuv[:, 35:].any() and not r["model_image"][:, :5].any()
    src_iuv = photos["a1"]["iuv"]
    # nearest neighbour: every output IUV triple exists in the input, no blended labels
    src_triples = {tuple(t) for t in src_iuv.reshape(-1, 3)}
    assert {tuple(t) for t in iuv[:, 5:35].reshape(-1, 3)} <= src_triples
    assert set(np.unique(r["model_mask"])) <= {0, 1}
    # the photo is smoothly resampled, not label-like: its mean survives
    assert abs(r["model_image"][:, 5:35].mean() - photos["a1"]["image"].mean()) < 4


def _bad_folder(root: Path):
    photos = _folder(root)
    d = root / "train" / "images"
    _photo(d, "corrupt", 10)
    Path(d / "corrupt.png").write_bytes(Path(d / "a1.png").read_bytes()[:60])
    _photo(d, "small", 11, iuv=fixtures.person_iuv(16, 12, (2, 2, 14, 10)), parse=False)
    big = fixtures.person_iuv(H, W, (2, 2, 30, 20))
    big[5, 5, 0] = 40
    _photo(d, "badlabel", 12, iuv=big)
    _photo(d, "empty", 13, iuv=np.zeros((H, W, 3), np.uint8))
    _photo(d, "noiuv", 14, iuv=False, parse=False)
    _photo(d, "bomb", 15)
    fixtures.write_png_bomb(d / "bomb.png", 12000, 16000)  # refused from its header, never decoded
    rows = [("a1", "a2"), ("b1", "b2"), ("corrupt", "a1"), ("small", "b1"), ("badlabel", "a2"),
            ("empty", "b2"), ("a1", "ghost"), ("noiuv", "a1"), ("bomb", "b2")]
    _csv(root / "train" / "pairs.csv", "source,target", rows)
    # a truncated dump in the folder: reported once, the PNG outputs still build
    fixtures.write_torch_dump(root / "train" / "densepose.pkl", [])
    raw = (root / "train" / "densepose.pkl").read_bytes()
    (root / "train" / "densepose.pkl").write_bytes(raw[: len(raw) // 2])
    return photos


def test_bad_records_reported_and_skipped(tmp_path):
    _bad_folder(tmp_path / "in")
    path = _build(tmp_path / "in", tmp_path / "out", num_unpaired=0)
    src = tfds_source.load_source(tmp_path / "out", f"folder_{H}x{W}", "train", with_meta=True)
    assert sorted((r["model_id"], r["person_id"]) for r in src if r["paired"]) == [("a1", "a2"), ("b1", "b2")]
    lines = Path(path, "build_report.txt").read_text().splitlines()[1:]
    expect = {"corrupt.png: unreadable image", "small_IUV.png: IUV is 16x12 but the photo is 32x24",
              "badlabel_IUV.png: part index I up to 40", "empty_IUV.png: no person found",
              "pairs.csv: row 8: partner file images/ghost missing",
              "noiuv.png: partner file missing: no DensePose output",
              "bomb.png: image is 16000x12000 (192.0 megapixels), over the limit of 40.0 megapixels",
              "densepose.pkl: not a torch.save zip archive (truncated"}
    for e in expect:
        assert sum(e in line for line in lines) == 1, (e, lines)
    assert len(lines) == len(expect)
    assert all(line.startswith("train: ") for line in lines)


def test_pairs_csv_as_spreadsheets_save_it(tmp_path):
    """A UTF-8 BOM, CRLF line ends and spaces in the header (Excel's "CSV UTF-8") read like a plain CSV;
    a missing column and non-UTF-8 bytes are one line naming the file."""
    _folder(tmp_path / "in")
    pairs = tmp_path / "in" / "train" / "pairs.csv"
    pairs.write_bytes("\ufeffsource, target\r\na1,a2\r\nb1,b2\r\n".encode())
    from m2e_jax.records import folder

    cat = folder.read_folder(tmp_path / "in")["train"]
    assert sorted((e.model, e.person) for e in cat.examples if e.paired) == [("a1", "a2"), ("b1", "b2")]
    for raw, text in ((b"src,target\na1,a2\n", "missing column(s) ['source']"),
                      (b"source,target\na1,caf\xe9\n", "not UTF-8 text")):
        pairs.write_bytes(raw)
        with pytest.raises(ValueError, match=re.escape(f"pairs.csv: {text}")):
            folder.read_folder(tmp_path / "in")


def test_strict_stops_and_leaves_no_dataset(tmp_path):
    _bad_folder(tmp_path / "in")
    with pytest.raises(photos.RecordError) as info:
        _build(tmp_path / "in", tmp_path / "out", num_unpaired=0, strict=True)
    assert "\n" not in str(info.value) and "densepose.pkl" in str(info.value)
    cfg_dir = tmp_path / "out" / "m2e_dataset" / f"folder_{H}x{W}"
    assert not cfg_dir.exists() or not any(cfg_dir.iterdir())
    with pytest.raises(FileNotFoundError, match="no built dataset"):
        tfds_source.load_source(tmp_path / "out", f"folder_{H}x{W}", "train")
    # the command line: one error line, exit status 1
    os.remove(tmp_path / "in" / "train" / "densepose.pkl")
    rc = build.main(["--dataset", "folder", "--manual_dir", str(tmp_path / "in"), "--data_dir",
                     str(tmp_path / "out"), "--height", str(H), "--width", str(W), "--strict",
                     "--workers", "0"])
    assert rc == 1


def test_dump_folder_builds_pasted_iuv(tmp_path):
    d = tmp_path / "in" / "test" / "images"
    d.mkdir(parents=True)
    rng = np.random.default_rng(3)
    entries, truth = [], {}
    for n in ("m", "p"):
        fixtures.write_rgb(d / f"{n}.jpg", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        labels = rng.integers(1, 25, (20, 14))
        uv = rng.random((2, 20, 14), dtype=np.float32)
        entries.append({"file_name": f"/gpu/box/{n}.jpg", "scores": [0.9], "boxes": [[3.6, 5.2, 17.9, 25.8]],
                        "results": [(labels, uv)]})
        truth[n] = (labels, uv)
    fixtures.write_torch_dump(tmp_path / "in" / "test" / "results.pkl", entries)
    _csv(tmp_path / "in" / "test" / "pairs.csv", "source,target", [("m.jpg", "p.jpg")])
    _build(tmp_path / "in", tmp_path / "out", garment_kind="lower", num_unpaired=0)
    (r,) = tfds_source.load_source(tmp_path / "out", f"folder_{H}x{W}", "test")
    for role, n in (("model", "m"), ("person", "p")):
        labels, uv = truth[n]
        iuv = r[f"{role}_iuv"]
        np.testing.assert_array_equal(iuv[5:25, 3:17, 0], labels)  # x=3, y=5, w=14, h=20
        np.testing.assert_array_equal(iuv[5:25, 3:17, 2], np.round(uv[1] * 255))
        assert (iuv[..., 0] > 0).sum() == labels.size
        # no parsing map: the mask is the DensePose parts a lower garment covers (7..14)
        np.testing.assert_array_equal(r[f"{role}_mask"][..., 0], (iuv[..., 0] >= 7) & (iuv[..., 0] <= 14))
    assert r["garment_kind"] == 1


def test_synthetic_world_round_trip(tmp_path):
    from m2e_jax.synthetic import dataset as synthetic

    path = build.build("synthetic", tmp_path / "world", tmp_path / "out", 64, 48, seed=3,
                       synthetic_counts=(3, 2))
    assert Path(path, "dataset_info.json").is_file()
    for split, n in (("train", 3), ("test", 2)):
        src = tfds_source.load_source(tmp_path / "out", "synthetic_64x48", split, with_meta=True)
        assert len(src) == n
        by_key = {r["model_id"] + r["person_id"]: r for r in src}
        for ex in synthetic.make_examples(3, split, n, 64, 48):
            r = by_key[ex["model_id"] + ex["person_id"]]
            for k in data_schema.KEYS:
                np.testing.assert_array_equal(r[k], ex[k], err_msg=k)


@pytest.mark.slow  # spawns 2 worker processes that import jax/tfds (~10 s on 2 cores)
def test_parallel_build_equals_serial_byte_for_byte_with_bad_records(tmp_path):
    """--workers 2 on a folder with bad records (unreadable photo, wrong-size IUV, I > 24, no person, a
    truncated dump, a missing partner) ends, in a fresh process under a timeout, with the same build
    as the serial one (it used to hang): dataset_info, features and the report byte for byte, and
    every record's fields byte for byte (PNG bytes undecoded). The array_record files themselves
    differ run to run even serially: protobuf writes a tf.Example's feature map in no fixed order."""
    import subprocess
    import sys

    _bad_folder(tmp_path / "in")
    for w in (0, 2):
        r = subprocess.run([sys.executable, "-m", "data_prep.build", "--dataset", "folder", "--manual_dir",
                            str(tmp_path / "in"), "--data_dir", str(tmp_path / f"out{w}"), "--height", str(H),
                            "--width", str(W), "--num_unpaired", "3", "--workers", str(w)],
                           capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    serial, parallel = (Path(tfds_source.dataset_dir(tmp_path / f"out{w}", f"folder_{H}x{W}"))
                        for w in (0, 2))
    names = sorted(p.name for p in serial.iterdir())
    assert names == sorted(p.name for p in parallel.iterdir()) and "build_report.txt" in names
    for n in names:
        if ".array_record" not in n:
            assert (serial / n).read_bytes() == (parallel / n).read_bytes(), n
    import tensorflow_datasets as tfds

    a, b = (tfds.builder_from_directory(str(d)) for d in (serial, parallel))
    raw = {k: tfds.decode.SkipDecoding() for k, f in a.info.features.items()
           if isinstance(f, tfds.features.Image)}
    ra, rb = (list(x.as_data_source("train", decoders=raw)) for x in (a, b))
    assert len(ra) == len(rb) == 4  # 2 pairs, 1 triplet, 1 of 3 unpaired draws without a bad photo
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert len(Path(serial, "build_report.txt").read_text().splitlines()) == 1 + 8
