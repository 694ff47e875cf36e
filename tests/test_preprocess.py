"""preprocess: letterbox to the network size and back, and the full-resolution paste-back."""

import numpy as np
import pytest

from m2e_jax import preprocess


def smooth_photo(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rgb = np.stack([np.sin(3 * x + 1), np.cos(2 * y), np.sin(2 * x + 3 * y)], -1)
    return np.round((rgb + 1) * 127.5).astype(np.uint8)


def blocky_iuv(h: int, w: int) -> np.ndarray:
    iuv = np.zeros((h, w, 3), np.uint8)
    iuv[h // 4: 3 * h // 4, w // 4: 3 * w // 4, 0] = 2  # torso front
    iuv[h // 4: h // 2, w // 4: 3 * w // 4, 0] = 23   # head band
    iuv[..., 1] = np.arange(w, dtype=np.uint8)[None, :] * (iuv[..., 0] > 0)
    iuv[..., 2] = np.arange(h, dtype=np.uint8)[:, None] * (iuv[..., 0] > 0)
    return iuv


def test_fit_is_exact_at_network_size():
    img, iuv = smooth_photo(32, 32), blocky_iuv(32, 32)
    f = preprocess.fit(img, iuv, 32, 32)
    np.testing.assert_array_equal(f.image, img)
    np.testing.assert_array_equal(f.iuv, iuv)
    np.testing.assert_array_equal(preprocess.unfit(preprocess.to_float(f.image), f.box),
                                  preprocess.to_float(img))


def test_fit_keeps_aspect_and_labels():
    img, iuv = smooth_photo(96, 48), blocky_iuv(96, 48)
    f = preprocess.fit(img, iuv, 32, 32)
    # 96x48 -> 32x16 content centred horizontally; the padding is black photo / background IUV.
    assert (f.box.new_h, f.box.new_w, f.box.top, f.box.left) == (32, 16, 0, 8)
    assert not f.image[:, :8].any() and not f.iuv[:, 24:].any()
    # Nearest-neighbour IUV: every fitted (I, U, V) triple exists in the source map.
    src = {tuple(v) for v in iuv.reshape(-1, 3)}
    assert {tuple(v) for v in f.iuv[:, 8:24].reshape(-1, 3)} <= src
    assert set(np.unique(f.iuv[..., 0])) == {0, 2, 23}


def test_unfit_round_trip_on_a_smooth_photo():
    img = smooth_photo(80, 60)
    f = preprocess.fit(img, blocky_iuv(80, 60), 64, 64)
    back = preprocess.unfit(preprocess.to_float(f.image), f.box)
    assert back.shape == (80, 60, 3)
    err = np.abs(preprocess.to_uint8(back).astype(int) - img.astype(int))
    assert err.mean() < 2.0 and err[4:-4, 4:-4].max() <= 6


def test_paste_back_keeps_person_pixels_outside_the_region():
    h, w = 90, 60
    person = smooth_photo(h, w)
    f = preprocess.fit(person, blocky_iuv(h, w), 32, 32)
    region = np.zeros((32, 32, 1), np.float32)
    region[10:20, 12:22] = 1.0
    person_net = preprocess.to_float(f.image)
    output = region * -1.0 + (1 - region) * person_net  # a black garment inside the region
    out = preprocess.paste_back(person, output, person_net, region, f.box)
    assert out.shape == person.shape and out.dtype == np.uint8
    r = preprocess.unfit(region, f.box)[..., 0]
    np.testing.assert_array_equal(out[r == 0], person[r == 0])
    assert (r == 0).mean() > 0.5
    inside = r > 0.999
    assert inside.sum() > 50 and out[inside].max() <= 1  # the network's black, at full resolution


def test_paste_back_is_the_network_output_at_network_size():
    rng = np.random.default_rng(0)
    person = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    f = preprocess.fit(person, blocky_iuv(32, 32), 32, 32)
    soft = np.clip(rng.uniform(-1, 1, (32, 32, 1)), 0, 1).astype(np.float32)
    generated = rng.uniform(-1, 1, (32, 32, 3)).astype(np.float32)
    person_net = preprocess.to_float(f.image)
    output = soft * generated + (1 - soft) * person_net  # FTN's composite
    out = preprocess.paste_back(person, output, person_net, soft, f.box)
    np.testing.assert_array_equal(out, preprocess.to_uint8(output))


def test_fit_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match=r"m\.png: IUV is 32x30 but the photo is 32x32"):
        preprocess.fit(smooth_photo(32, 32), blocky_iuv(32, 30), 32, 32, where="m.png")
    with pytest.raises(ValueError, match="parsing map"):
        preprocess.fit(smooth_photo(32, 32), blocky_iuv(32, 32), 32, 32, parse=np.zeros((3, 3)))
