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


def test_single_person_detectron_output_has_all_zero_inds(tmp_path):
    """One detection: DensePose's detectron/utils/vis.py `vis_one_image` writes All_inds = mask * i with
    i = 0 (the only rank), so NAME_INDS.png is all zero and the person is the whole foreground."""
    field = fixtures.chart_field(14, 8, seed=3)
    iuv_path, inds_path = fixtures.write_detectron_outputs(tmp_path, "one.jpg", 20, 16,
                                                           [[4, 3, 12, 17, 0.97]], [field])
    assert not images.read_labels(inds_path).any()
    full = iuv_png.read_iuv_png(iuv_path)
    assert (full[..., 0] > 0).sum() == (field[0] > 0).sum()
    for select in ("largest", "central", "score", 0):
        np.testing.assert_array_equal(iuv_png.read_iuv_png(iuv_path, inds_path, select), full)


def test_inds_is_the_score_rank_and_selection_uses_it(tmp_path):
    """Two drawn detections and one below vis_one_image's 0.65 threshold: INDS values are the ranks in
    ascending score order over all three (0.3 -> 0, not drawn; 0.8 -> 1; 0.95 -> 2). Without the
    sub-threshold one, the large lower-scoring person is 0, like the background."""
    big, small = fixtures.chart_field(26, 14, seed=4), fixtures.chart_field(8, 6, seed=5)
    faint = fixtures.chart_field(6, 4, seed=6)
    for boxes, fields, big_value, small_value in (
            ([[10, 2, 24, 28, 0.8], [1, 1, 7, 9, 0.95]], [big, small], 0, 1),
            ([[27, 20, 31, 26, 0.3], [10, 2, 24, 28, 0.8], [1, 1, 7, 9, 0.95]], [faint, big, small], 1, 2)):
        iuv_path, inds_path = fixtures.write_detectron_outputs(tmp_path, "two.jpg", 30, 32, boxes, fields)
        full, inds = iuv_png.read_iuv_png(iuv_path), images.read_labels(inds_path)
        big_mask = np.zeros((30, 32), bool)
        big_mask[2:28, 10:24] = big[0] > 0
        np.testing.assert_array_equal(full[..., 0] > 0, big_mask | (inds == small_value) & (full[..., 0] > 0))
        assert set(np.unique(inds[full[..., 0] > 0])) == {big_value, small_value}
        for select, want in (("largest", big_mask), ("central", big_mask), ("score", ~big_mask),
                             (big_value, big_mask), (small_value, ~big_mask)):
            got = iuv_png.read_iuv_png(iuv_path, inds_path, select)
            on = want & (full[..., 0] > 0)
            np.testing.assert_array_equal(got[on], full[on], err_msg=str(select))
            assert not got[~on].any(), select
    with pytest.raises(images.ReadError, match=r"two_INDS\.png: no person with INDS value 5"):
        iuv_png.read_iuv_png(iuv_path, inds_path, 5)


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
