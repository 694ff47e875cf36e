"""DensePose readers: Detectron IUV PNG channel order and person selection, torch-free dump reading."""

import io
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np
import pytest

from data_prep import fixtures
from m2e_jax.readers import detectron2_dump, images, iuv_png


def _png_like_opencv(path, iuv):
    """PNG bytes as cv2.imwrite stores an [I, U, V] array: channel 0 is Blue, so the file's RGB
    triplets are (V, U, I). Written by hand (zlib + chunks) to stay independent of PIL."""
    h, w, _ = iuv.shape
    rgb = iuv[..., [2, 1, 0]]
    raw = b"".join(b"\x00" + rgb[r].tobytes() for r in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_iuv_png_channel_order_matches_opencv(tmp_path):
    iuv = fixtures.person_iuv(12, 10, (2, 2, 11, 9), seed=1)
    _png_like_opencv(tmp_path / "a_IUV.png", iuv)
    got = iuv_png.read_iuv_png(tmp_path / "a_IUV.png")
    np.testing.assert_array_equal(got, iuv)
    assert got[..., 0].max() <= 24 and got[..., 0].max() > 0  # I really is channel 0
    # our PIL writer of the reversed array stores the same pixels as OpenCV would
    fixtures.write_iuv_png(tmp_path / "b_IUV.png", iuv)
    ours, opencv_style = (images.read_rgb(tmp_path / f"{n}_IUV.png") for n in "ba")
    np.testing.assert_array_equal(ours, opencv_style)


def test_instance_selection_zeroes_other_people(tmp_path):
    iuv = fixtures.person_iuv(20, 30, (0, 0, 20, 30), seed=2)
    inds = np.zeros((20, 30), np.uint8)
    inds[2:18, 1:7] = 1      # small, off-centre
    inds[1:19, 10:22] = 2    # large, central
    inds[5:9, 25:29] = 3     # tiny, at the edge
    fixtures.write_iuv_png(tmp_path / "p_IUV.png", iuv)
    fixtures.write_label_png(tmp_path / "p_INDS.png", inds)
    assert iuv_png.inds_path_for(tmp_path / "p_IUV.png") == str(tmp_path / "p_INDS.png")
    for select, keep in (("largest", 2), ("central", 2), (1, 1), (3, 3)):
        got = iuv_png.read_iuv_png(tmp_path / "p_IUV.png", tmp_path / "p_INDS.png", select)
        on = inds == keep
        np.testing.assert_array_equal(got[on], iuv[on])
        assert not got[~on].any(), select
    with pytest.raises(images.ReadError, match="instance 5 not in"):
        iuv_png.read_iuv_png(tmp_path / "p_IUV.png", tmp_path / "p_INDS.png", 5)


def test_corrupt_and_wrong_mode_pngs_name_the_file(tmp_path):
    good = tmp_path / "g.png"
    fixtures.write_rgb(good, np.full((8, 8, 3), 7, np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(images.ReadError, match=r"bad\.png: unreadable image"):
        images.read_rgb(bad)
    fixtures.write_label_png(tmp_path / "gray_IUV.png", np.zeros((4, 4)))
    with pytest.raises(images.ReadError, match=r"gray_IUV\.png: expected a 3-channel IUV PNG"):
        images.read_iuv_rgb_png(tmp_path / "gray_IUV.png")


def _two_people(rng):
    a = (rng.integers(0, 25, (5, 4)), rng.random((2, 5, 4), dtype=np.float32))
    b = (rng.integers(1, 25, (9, 7)), rng.random((2, 9, 7), dtype=np.float32))
    return {"file_name": "/data/in/photo_1.jpg", "scores": [0.6, 0.95],
            "boxes": [[1.7, 2.2, 5.9, 7.9], [10.5, 3.0, 17.99, 12.4]], "results": [a, b]}


def test_dump_round_trip_and_paste(tmp_path):
    rng = np.random.default_rng(0)
    entry = _two_people(rng)
    path = tmp_path / "results.pkl"
    fixtures.write_torch_dump(path, [entry], location="cuda:0")
    assert zipfile.is_zipfile(path)
    (e,) = detectron2_dump.load_dump(path)
    assert e.file_name == "/data/in/photo_1.jpg"
    np.testing.assert_allclose(e.scores, [0.6, 0.95])
    np.testing.assert_allclose(e.boxes_xyxy, np.asarray(entry["boxes"], np.float32))  # strided storage
    for r, (labels, uv) in zip(e.results, entry["results"]):
        np.testing.assert_array_equal(r.labels, labels)
        np.testing.assert_array_equal(r.uv, uv)
    # score picks person b: box x=int(10.5)=10, y=3, w=int(7.49)=7, h=int(9.4)=9 -> labels [9, 7]
    full = detectron2_dump.entry_to_iuv(e, 16, 20, "score")
    labels, uv = entry["results"][1]
    np.testing.assert_array_equal(full[3:12, 10:17, 0], labels)
    np.testing.assert_array_equal(full[3:12, 10:17, 1], np.round(uv[0] * 255).astype(np.uint8))
    assert not np.delete(full, np.s_[10:17], axis=1)[..., 0].any()
    # "central" on a 16x12 image picks person a (its box centre is nearer), and clipping at the edge
    left = detectron2_dump.entry_to_iuv(e, 16, 12, "central")
    la, uva = entry["results"][0]
    np.testing.assert_array_equal(left[2:7, 1:5, 0], la)
    assert (left[2:7, 1:5, 1:][la == 0] == 0).all()  # no UV on background
    clipped = detectron2_dump.entry_to_iuv(e, 8, 14, 1)
    np.testing.assert_array_equal(clipped[3:8, 10:14, 0], labels[:5, :4])


def test_dump_refuses_foreign_code_cse_legacy_and_truncation(tmp_path):
    evil = tmp_path / "evil.pkl"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(os.system, protocol=2))
    with pytest.raises(detectron2_dump.DumpError, match=r"refusing to unpickle posix\.system"):
        detectron2_dump.load_dump(evil)

    cse = tmp_path / "cse.pkl"
    fixtures.write_torch_dump(cse, [_two_people(np.random.default_rng(1))],
                              result_class="DensePoseEmbeddingPredictorOutput")
    with pytest.raises(detectron2_dump.DumpError, match="CSE.*no IUV"):
        detectron2_dump.load_dump(cse)

    legacy = tmp_path / "legacy.pkl"
    legacy.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(detectron2_dump.DumpError, match="legacy .*unsupported"):
        detectron2_dump.load_dump(legacy)

    good = tmp_path / "good.pkl"
    fixtures.write_torch_dump(good, [_two_people(np.random.default_rng(2))])
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(detectron2_dump.DumpError, match=r"cut\.pkl: (corrupt or truncated|not a torch)"):
        detectron2_dump.load_dump(cut)
    # a storage cut short inside an intact zip
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "short.pkl", "w") as dst:
        for n in src.namelist():
            data = src.read(n)
            dst.writestr(n, data[:8] if n.endswith("/data/2") else data)  # one int64 left
    with pytest.raises(detectron2_dump.DumpError, match="runs past its storage"):
        detectron2_dump.load_dump(tmp_path / "short.pkl")


def test_pickle_opcodes_are_torch_style(tmp_path):
    import pickletools

    fixtures.write_torch_dump(tmp_path / "d.pkl", [_two_people(np.random.default_rng(3))])
    with zipfile.ZipFile(tmp_path / "d.pkl") as z:
        out = io.StringIO()
        pickletools.dis(z.read("d/data.pkl"), out)
    text = out.getvalue()
    for op in ("GLOBAL     'torch._utils _rebuild_tensor_v2'", "GLOBAL     'torch FloatStorage'",
               "BINPERSID", "NEWOBJ", "BUILD",
               "'densepose.structures.chart_result DensePoseChartResultWithConfidences'"):
        assert op in text, op
