"""The one image-opening function every command uses: image bombs refused from the header, before
decoding; truncated / non-image / CMYK / 16-bit / palette / alpha / EXIF-rotated photos; IUV files
that are not what Detectron writes. Each refusal is one line naming the file."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from data_prep import fixtures
from m2e_jax.readers import images, photos
from m2e_jax.readers.photos import ImageRef, IuvRef


def _chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png(path, h, w, color_type, bitdepth=8, samples=None):
    """A PNG written by hand (zlib + chunks), any bit depth. Without `samples` only the header is
    real: the pixel data is a few KB of zeros, as in an image bomb."""
    if samples is None:
        idat = zlib.compress(b"\x00" * 4096)
    else:
        be = np.asarray(samples).astype(">u2" if bitdepth == 16 else "u1")
        idat = zlib.compress(b"".join(b"\x00" + be[r].tobytes() for r in range(h)))
    ihdr = struct.pack(">IIBBBBB", w, h, bitdepth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
                     + _chunk(b"IEND", b""))


def _one_line(info, *parts):
    msg = str(info.value)
    assert "\n" not in msg and all(p in msg for p in parts), msg


def test_bombs_are_refused_from_the_header_before_decoding(tmp_path, monkeypatch):
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: decoded.append(self.size) or real_load(self))
    _png(tmp_path / "big.png", 9000, 9000, 2)  # 81 M: under PIL's own limit, over ours (40 M)
    with pytest.raises(images.ReadError) as info:
        images.read_rgb(tmp_path / "big.png")
    _one_line(info, "big.png: image is 9000x9000 (81.0 megapixels), over the limit of 40.0 megapixels")
    fixtures.write_png_bomb(tmp_path / "bomb.png", 12000, 16000)  # 16000x12000: PIL's DecompressionBombError
    with pytest.raises(images.ReadError) as info:
        images.read_rgb(tmp_path / "bomb.png")
    _one_line(info, "bomb.png: image is 16000x12000 (192.0 megapixels), over the limit of 40.0 megapixels")
    _png(tmp_path / "warn.png", 10000, 9500, 2)  # 95 M: PIL only warns (DecompressionBombWarning)
    with pytest.raises(images.ReadError) as info:
        images.read_rgb(tmp_path / "warn.png", max_pixels=200_000_000)
    _one_line(info, "warn.png: image too large to decode safely")
    assert decoded == []  # none of them was decoded
    # the limit is the caller's: a 30x20 photo over a 500-pixel limit, through load_photo
    fixtures.write_rgb(tmp_path / "p.png", np.zeros((30, 20, 3), np.uint8))
    with pytest.raises(photos.RecordError) as info:
        photos.load_photo(ImageRef("p", str(tmp_path / "p.png"), "p"), need_iuv=False, max_pixels=500)
    _one_line(info, "p.png: image is 20x30 (0.0 megapixels), over the limit of 0.0 megapixels")
    assert images.read_rgb(tmp_path / "p.png", max_pixels=600).shape == (30, 20, 3)


def test_missing_truncated_and_non_images_end_in_one_line(tmp_path):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    for suffix in ("png", "jpg"):
        fixtures.write_rgb(tmp_path / f"ok.{suffix}", photo)
        raw = (tmp_path / f"ok.{suffix}").read_bytes()
        (tmp_path / f"cut.{suffix}").write_bytes(raw[: len(raw) // 2])
        with pytest.raises(images.ReadError) as info:
            images.read_rgb(tmp_path / f"cut.{suffix}")
        _one_line(info, f"cut.{suffix}: unreadable image, truncated or corrupt")
    (tmp_path / "notes.jpg").write_text("not a photo")
    (tmp_path / "dir.png").mkdir()
    for name, text in (("notes.jpg", "unreadable image (no image format PIL reads"),
                       ("dir.png", "a folder, not an image"), ("gone.png", "file not found")):
        with pytest.raises(images.ReadError) as info:
            images.read_rgb(tmp_path / name)
        _one_line(info, f"{name}: {text}")


def test_photo_modes_become_rgb(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
    # CMYK JPEG (print workflows): converted, not refused
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    got = images.read_rgb(tmp_path / "cmyk.jpg").astype(int)
    assert got.shape == (16, 12, 3) and np.abs(got - rgb).mean() < 12
    # 16-bit grey PNG: scaled to 8 bits by the high byte, not clipped to white
    grey = rng.integers(0, 65536, (16, 12), dtype=np.uint16)
    _png(tmp_path / "g16.png", 16, 12, 0, 16, grey)
    np.testing.assert_array_equal(images.read_rgb(tmp_path / "g16.png"),
                                  np.repeat((grey >> 8)[..., None], 3, -1))
    # 16-bit RGB PNG: PIL keeps the high byte
    deep = rng.integers(0, 65536, (16, 12, 3), dtype=np.uint16)
    _png(tmp_path / "rgb16.png", 16, 12, 2, 16, deep.reshape(16, 36))
    np.testing.assert_array_equal(images.read_rgb(tmp_path / "rgb16.png"), (deep >> 8).astype(np.uint8))
    # palette PNG, then with a transparent entry: composited over black, like the letterbox padding
    pal = Image.fromarray(rgb).quantize(8)
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(images.read_rgb(tmp_path / "pal.png"), np.asarray(pal.convert("RGB")))
    pal.save(tmp_path / "pal_t.png", transparency=0)
    got = images.read_rgb(tmp_path / "pal_t.png")
    idx = np.asarray(pal)
    assert not got[idx == 0].any() and (got[idx != 0] == np.asarray(pal.convert("RGB"))[idx != 0]).all()
    # RGBA: alpha 0 -> black, 255 -> the colour, 128 -> half
    alpha = np.tile(np.array([0, 128, 255], np.uint8), (16, 4))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    got = images.read_rgb(tmp_path / "rgba.png").astype(int)
    np.testing.assert_array_equal(got[alpha == 0], 0)
    np.testing.assert_array_equal(got[alpha == 255], rgb[alpha == 255])
    assert np.abs(got[alpha == 128] - rgb[alpha == 128].astype(int) * 128 / 255).max() <= 1
    # EXIF orientation 6 (a phone held upright): turned as detectron2's read_image turns it
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    assert images.read_rgb(tmp_path / "phone.jpg").shape == (12, 16, 3)


def test_iuv_files_not_as_detectron_writes_them_are_refused(tmp_path):
    size = (20, 16)
    fixtures.write_rgb(tmp_path / "p.png", np.zeros((*size, 3), np.uint8))
    iuv = fixtures.person_iuv(*size, (2, 2, 18, 14))
    cases = {}
    fixtures.write_label_png(tmp_path / "grey_IUV.png", iuv[..., 0])
    cases["grey_IUV.png"] = "expected a 3-channel IUV PNG, got PIL mode L"
    Image.fromarray(np.dstack([iuv, np.full(size, 255, np.uint8)]), "RGBA").save(tmp_path / "alpha_IUV.png")
    cases["alpha_IUV.png"] = "expected a 3-channel IUV PNG, got PIL mode RGBA"
    _png(tmp_path / "deep_IUV.png", *size, 2, 16, iuv[..., ::-1].astype(np.uint16).reshape(size[0], -1) << 8)
    cases["deep_IUV.png"] = "16-bit IUV PNG; Detectron writes 8-bit"
    Image.fromarray(iuv[..., ::-1]).save(tmp_path / "lossy_IUV.jpg")
    cases["lossy_IUV.jpg"] = "IUV must be a PNG as Detectron writes it, got JPEG"
    bad = iuv.copy()
    bad[5, 5, 0] = 40
    fixtures.write_iuv_png(tmp_path / "i40_IUV.png", bad)
    cases["i40_IUV.png"] = "part index I up to 40"
    fixtures.write_iuv_png(tmp_path / "small_IUV.png", fixtures.person_iuv(10, 8, (1, 1, 9, 7)))
    cases["small_IUV.png"] = "IUV is 10x8 but the photo is 20x16"
    for name, text in cases.items():
        ref = ImageRef("p", str(tmp_path / "p.png"), "p", IuvRef(png=str(tmp_path / name)))
        with pytest.raises(photos.RecordError) as info:
            photos.load_photo(ref)
        _one_line(info, f"{name}: {text}")
