"""The synthetic try-on world: exact IUV, exact ground truth, determinism, splits, files on disk."""

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2e_jax import data_schema, densepose, tfds_source
from m2e_jax.synthetic import __main__ as cli
from m2e_jax.synthetic import contact_sheet, dataset, records, world

H, W = 64, 48


def _random_person(seed: int):
    rng = np.random.default_rng(seed)
    return (world.sample_identity(rng), world.sample_garment(rng, "upper"),
            world.sample_garment(rng, "lower"), world.sample_pose(rng))


@pytest.fixture(scope="module")
def examples():
    """Examples 0..11 of train at 64x48, half paired."""
    return dataset.make_examples(0, "train", 12, H, W)


@pytest.fixture(scope="module")
def unpaired():
    return dataset.make_example(3, "train", 5, 128, 96, kind="unpaired")


@pytest.mark.parametrize("size", [(64, 48), (128, 96), (256, 192)])
def test_iuv_agrees_with_image_exactly(size):
    h, w = size
    for seed in range(4):
        idn, up, lo, pose = _random_person(seed)
        r = world.render(idn, up, lo, pose, h, w)
        i, u, v = r.iuv[..., 0], r.iuv[..., 1], r.iuv[..., 2]
        fg = i > 0
        assert 0.08 < fg.mean() < 0.6  # a person, roughly filling the frame
        np.testing.assert_array_equal(r.image[fg], world.texel(idn, up, lo, i[fg], u[fg], v[fg]))
        # Background pixels carry no surface coordinates; only this world's labels appear.
        assert not r.iuv[~fg].any()
        assert set(np.unique(i[fg])) <= set(world.LABELS_USED)
        # The person's own pixels are not background: the texel differs from the backdrop somewhere.
        assert (r.image[fg] != world.background(idn, h, w)[fg]).any()
        densepose.check_iuv(r.iuv, "render")


def test_texel_takes_uint8_and_float_uv_alike():
    idn, up, lo, _ = _random_person(1)
    part = np.array(world.LABELS_USED)
    u8 = np.arange(len(part), dtype=np.uint8) * 11
    v8 = 255 - u8
    np.testing.assert_array_equal(world.texel(idn, up, lo, part, u8, v8),
                                  world.texel(idn, up, lo, part, u8 / 255.0, v8 / 255.0))


def _uv_warp_agreement(src_image, src_iuv, dst_image, dst_iuv, max_dist=6):
    """Nearest-UV warp of src onto dst per part label: (pixels matched, fraction with dst's colour)."""
    from scipy.spatial import cKDTree

    src_iuv, dst_iuv = src_iuv.astype(np.int32), dst_iuv.astype(np.int32)
    agree = total = 0
    for label in world.LABELS_USED:
        src, dst = src_iuv[..., 0] == label, dst_iuv[..., 0] == label
        if src.sum() < 4 or not dst.any():
            continue
        dist, idx = cKDTree(src_iuv[src][:, 1:]).query(dst_iuv[dst][:, 1:])
        close = dist <= max_dist  # the same surface point up to the renders' UV sampling
        warped = src_image[src][idx[close]].astype(np.int32)
        agree += (np.abs(warped - dst_image[dst][close]).max(-1) <= 12).sum()
        total += close.sum()
    return total, agree / max(total, 1)


def test_uv_warp_reproduces_the_other_pose():
    """Moving M's pixels to P's pose through (I, U, V) gives P's colours (same outfit)."""
    ex = dataset.make_example(0, "train", 4, 256, 192, kind="paired")
    total, frac = _uv_warp_agreement(ex["model_image"], ex["model_iuv"], ex["person_image"], ex["person_iuv"])
    assert total > 3000 and frac > 0.95
    # Control: another person's outfit warped the same way does not match.
    other = dataset.make_example(0, "train", 5, 256, 192, kind="paired")
    _, frac_other = _uv_warp_agreement(other["model_image"], other["model_iuv"], ex["person_image"],
                                       ex["person_iuv"])
    assert frac_other < 0.5


def test_ground_truth_is_the_independent_render(unpaired):
    model, person, _ = dataset.example_people(3, "train", 5, "unpaired", "upper")
    a, g, _, _ = model
    b, h, own_lower, pose_b = person
    assert a.id != b.id and g.id != h.id
    expected = world.render(b, g, own_lower, pose_b, 128, 96)
    np.testing.assert_array_equal(unpaired["target_image"], expected.image)
    np.testing.assert_array_equal(unpaired["target_iuv"], unpaired["person_iuv"])  # same body, same pose
    p, t, i = unpaired["person_image"], unpaired["target_image"], unpaired["person_iuv"][..., 0]
    untouched = (i == 0) | np.isin(i, densepose.HEAD)
    np.testing.assert_array_equal(t[untouched], p[untouched])
    both = (unpaired["person_parse"] == 1) & (unpaired["target_parse"] == 1)
    assert both.sum() > 200
    assert (t[both] != p[both]).any(-1).mean() > 0.5
    assert unpaired["target_id"] == dataset.image_name(b, g, own_lower, pose_b)
    assert int(unpaired["paired"]) == 0 and int(unpaired["has_target"]) == 1


def test_lower_garment_triplet_swaps_only_the_lower_garment():
    ex = dataset.make_example(3, "train", 6, H, W, kind="unpaired", garment_kind="lower")
    p, t = ex["person_image"], ex["target_image"]
    keep = ex["person_parse"] != 2  # upper garment, skin, head, background stay P's
    keep &= ex["target_parse"] != 2
    np.testing.assert_array_equal(t[keep], p[keep])
    lower = (ex["person_parse"] == 2) & (ex["target_parse"] == 2)
    assert (t[lower] != p[lower]).any(-1).mean() > 0.5
    np.testing.assert_array_equal(ex["person_mask"][..., 0], ex["person_parse"] == 2)
    assert int(ex["garment_kind"]) == 1


def test_paired_examples_target_the_person(examples):
    paired = [ex for ex in examples if int(ex["paired"])]
    assert paired and len(paired) < len(examples)
    for ex in paired:
        np.testing.assert_array_equal(ex["target_image"], ex["person_image"])
        assert ex["model_id"].split("_")[:3] == ex["person_id"].split("_")[:3]  # same identity, garments
        assert ex["model_id"] != ex["person_id"]  # different pose
        assert not np.array_equal(ex["model_iuv"], ex["person_iuv"])


def test_examples_follow_the_schema_and_masks_match_parts(examples):
    for n, ex in enumerate(examples):
        data_schema.validate_example(ex, H, W, where=f"example {n}")
        for role in ("model", "person"):
            mask, i = ex[f"{role}_mask"][..., 0], ex[f"{role}_iuv"][..., 0]
            np.testing.assert_array_equal(mask, ex[f"{role}_parse"] == 1)
            assert mask.sum() > 0
            for value, kind in ((1, "upper"), (2, "lower")):
                labels = i[ex[f"{role}_parse"] == value]
                assert np.isin(labels, densepose.GARMENT_PARTS[kind]).all()


def test_occlusion_arm_in_front_of_and_behind_torso():
    in_front = behind = 0
    for seed in range(40):
        idn, up, lo, pose = _random_person(seed)
        segs = world.body_segments(idn, pose, 128, 96)
        torso = next(s for s in segs if s.labels == (2, 2))
        py, px = np.mgrid[0:128, 0:96] + 0.5
        inside_torso = world.segment_chart(torso, px, py)[0]
        iuv = world.rasterize(segs, 128, 96)
        arm = np.isin(iuv[..., 0], densepose.UPPER_ARMS + densepose.LOWER_ARMS + densepose.HANDS)
        in_front += (arm & inside_torso).sum() > 10
        if not all(pose.arm_front):
            behind += 1
            # An arm behind the torso never shows inside it.
            for k, side_labels in enumerate(((16, 18, 20, 22, 3), (15, 17, 19, 21, 4))):
                if not pose.arm_front[k]:
                    assert not (np.isin(iuv[..., 0], side_labels) & inside_torso).any()
    assert in_front >= 5 and behind >= 1


def test_same_seed_same_bytes_other_seed_differs(examples):
    again = dataset.make_examples(0, "train", 3, H, W)
    for a, b in zip(examples[:3], again):
        for key in data_schema.ARRAY_KEYS:
            assert a[key].tobytes() == b[key].tobytes()
        assert a["model_id"] == b["model_id"]
    other = dataset.make_example(1, "train", 0, H, W, kind="paired")
    assert other["model_image"].tobytes() != examples[0]["model_image"].tobytes()
    # Which indices are paired depends on (seed, split, index) only, not on how many are asked for.
    assert [int(e["paired"]) for e in dataset.make_examples(0, "train", 5, H, W)] == \
        [int(e["paired"]) for e in examples[:5]]


def test_splits_draw_from_disjoint_pools():
    for what in ("identity", "upper", "lower"):
        train, test = dataset.pool(0, "train", what), dataset.pool(0, "test", what)
        assert len({m.id for m in train}) == len(train)
        assert not {m.id for m in train} & {m.id for m in test}
        assert not {m.params() for m in train} & {m.params() for m in test}
    test_ex = dataset.make_example(0, "test", 0, H, W, kind="unpaired")
    assert all(part.startswith("test-") for part in test_ex["target_id"].split("_")[:3])


@pytest.mark.parametrize("kwargs, match", [
    (dict(height=0), "height must be >= 32"),
    (dict(height=31), "height must be >= 32"),
    (dict(width=16), "width must be >= 32"),
    (dict(height=64.0), "height must be an integer"),
    (dict(split="val"), r"unknown split 'val'.*'train', 'test'"),
    (dict(kind="both"), "unknown example kind"),
    (dict(garment_kind="shoes"), "garment_kind"),
    (dict(seed=-1), "seed must be a non-negative"),
    (dict(index=-2), "index must be a non-negative"),
])
def test_bad_arguments_give_clear_errors(kwargs, match):
    args = dict(seed=0, split="train", index=0, height=H, width=W)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        dataset.make_example(**args)


def test_written_folder_round_trips(tmp_path, examples):
    out = tmp_path / "ds"
    meta = dataset.write_dataset(out, 0, H, W, num_train=12, num_test=2)
    assert json.loads((out / "meta.json").read_text()) == json.loads(json.dumps(meta))
    assert meta["counts"]["train"]["examples"] == 12 and meta["version"] == dataset.VERSION
    images = out / "train" / "images"
    with open(out / "train" / "pairs.csv") as f:
        pairs = list(csv.DictReader(f))
    with open(out / "train" / "triplets.csv") as f:
        triplets = list(csv.DictReader(f))
    assert len(pairs) + len(triplets) == 12
    read = lambda name: np.asarray(Image.open(images / name))
    for ex in examples:
        for role in ("model", "person", "target"):
            name = ex[f"{role}_id"]
            np.testing.assert_array_equal(read(f"{name}.png"), ex[f"{role}_image"])
            iuv = ex["target_iuv"] if role == "target" else ex[f"{role}_iuv"]
            np.testing.assert_array_equal(densepose.iuv_from_png_rgb(read(f"{name}_IUV.png")), iuv)
            np.testing.assert_array_equal(read(f"{name}_parse.png"), ex[f"{role}_parse"])
        row = {"source": ex["model_id"], "target": ex["person_id"]} if int(ex["paired"]) else {
            "model": ex["model_id"], "person": ex["person_id"], "target": ex["target_id"]}
        assert row in (pairs if int(ex["paired"]) else triplets)
    # As OpenCV would write it: channel 0 of the array (I) is the PNG's blue channel.
    some = read(f"{examples[0]['model_id']}_IUV.png")
    assert some[..., 2].max() <= densepose.NUM_PARTS and some[..., 0].max() > densepose.NUM_PARTS
    # Same seed, same files byte for byte; the folder is refused when it already exists.
    again = dataset.write_dataset(tmp_path / "ds2", 0, H, W, num_train=12, num_test=2)
    assert again == meta
    listing = lambda root: sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    files = listing(out)
    assert files == listing(tmp_path / "ds2") and len(files) > 12
    for rel in files:
        assert (out / rel).read_bytes() == (tmp_path / "ds2" / rel).read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        dataset.write_dataset(out, 0, H, W, num_train=1, num_test=1)


def test_killed_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    real = dataset._write_split

    def failing(split_dir, exs):
        if split_dir.name == "test":
            raise KeyboardInterrupt  # as if killed half way
        return real(split_dir, exs)

    monkeypatch.setattr(dataset, "_write_split", failing)
    with pytest.raises(KeyboardInterrupt):
        dataset.write_dataset(tmp_path / "ds", 0, H, W, num_train=2, num_test=2)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_dataset_and_sheet_and_rejects_bad_args(tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    assert cli.main(["--out", str(tmp_path / "d"), "--height", "64", "--width", "48", "--num_train", "2",
                     "--num_test", "1", "--contact_sheet", str(sheet)]) == 0
    assert (tmp_path / "d" / "meta.json").exists()
    grid = np.asarray(Image.open(sheet))
    first = dataset.make_examples(0, "test", 1, 64, 48)[0]
    tile = grid[12:12 + 128:2, 60:60 + 96:2]  # the M tile of the first row, zoom 2
    np.testing.assert_array_equal(tile, first["model_image"])
    assert cli.main(["--out", str(tmp_path / "e"), "--height", "16"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "height must be >= 32" in err
    with pytest.raises(SystemExit):
        cli.main(["--out", str(tmp_path / "f"), "--garment_kind", "hat"])


def test_contact_sheet_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="no examples"):
        contact_sheet.contact_sheet([], tmp_path / "x.png")


def test_left_right_labels_follow_densepose():
    """The person faces the camera: their right side (DensePose's *_right parts) is on the image's left."""
    idn, up, lo, _ = _random_person(0)
    pose = world.Pose(id="rest", lean=0.0, head_tilt=0.0, shoulder=(0.2, 0.2), elbow=(0.0, 0.0),
                      arm_front=(True, True), hip=(0.1, 0.1), knee=(0.0, 0.0), zoom=1.0, shift=0.0)
    i = world.render(idn, up, lo, pose, 128, 96).iuv[..., 0]
    x = np.broadcast_to(np.arange(96), i.shape)
    mean_x = lambda label: x[i == label].mean()
    for right, left in ((23, 24), (3, 4), (6, 5), (9, 10), (13, 14), (16, 15), (18, 17), (20, 19)):
        assert mean_x(right) < mean_x(left), (right, left)
    # Arm halves: "inside" faces the torso, "outside" faces away.
    assert mean_x(18) < mean_x(16) and mean_x(15) < mean_x(17)


def test_world_rejects_wrong_garment_kinds():
    idn, up, lo, pose = _random_person(2)
    with pytest.raises(ValueError, match="upper and a lower garment"):
        world.render(idn, lo, up, pose, H, W)
    with pytest.raises(ValueError, match="unknown garment kind 'hat'"):
        world.sample_garment(np.random.default_rng(0), "hat")


# ------------------------------------------------------------------ harder worlds (effects.py)

from m2e_jax import config_schema  # noqa: E402
from m2e_jax.synthetic import effects  # noqa: E402

# One world per effect family, each turned up so that it shows in a handful of examples.
_ONE_EFFECT = {
    "densepose_errors": effects.WorldConfig(name="errors", border_px=2, uv_drift=12.0, drop_prob=0.5,
                                            speckle=0.03, swap_prob=0.3),
    "unseen_surface": effects.WorldConfig(name="unseen", cross_prob=0.6, back_prob=0.5),
    "off_body": effects.WorldConfig(name="off_body", loose_prob=1.0, loose_max=1.0, hem_max=0.4,
                                    long_hair_prob=1.0),
    "photometry": effects.WorldConfig(name="light", gain=0.3, cast=0.1, ramp=0.4, shadow=0.4),
    "camera": effects.WorldConfig(name="camera", zoom_out=0.25, shift_y=0.1, jpeg_quality=(30, 50),
                                  texture_prob=1.0),
}
_WORLDS = dict(_ONE_EFFECT, medium=effects.PRESETS["medium"], hard=effects.PRESETS["hard"])


def test_easy_preset_is_the_original_world_byte_for_byte():
    """sha256 of these examples' arrays, computed with the world before effects.py existed."""
    import hashlib

    h = hashlib.sha256()
    exs = dataset.make_examples(0, "train", 6, H, W, world_cfg="easy") + [
        dataset.make_example(2, "test", 3, H, W, "unpaired", "lower", world_cfg=effects.WorldConfig())]
    for ex in exs:
        for k in ("model_image", "model_iuv", "model_mask", "person_image", "person_iuv", "person_mask",
                  "target_image", "target_iuv"):
            h.update(ex[k].tobytes())
    assert h.hexdigest() == "150b04d9726434e6265137dfacddb64e1493cc1ec3bc816ce23df4076cb6296b"
    assert effects.preset("easy").is_easy() and not effects.preset("medium").is_easy()


def _clean_photo(seed, split, index, person, cfg):
    """P's photo as the world lit it, before JPEG: what P* must equal outside the garments."""
    r = world.render(*person, H, W)
    return r, effects.light(r.image, dataset.photo_conditions(seed, split, index, "person", cfg).lighting)


@pytest.mark.parametrize("name", sorted(_WORLDS))
def test_ground_truth_is_exact_and_errors_only_in_the_inputs(name):
    cfg = _WORLDS[name]
    seed, split = 7, "train"
    changed_iuv = changed_image = 0
    for index in range(8):
        ex = dataset.make_example(seed, split, index, H, W, "unpaired", world_cfg=cfg)
        model, person, target = dataset.example_people(seed, split, index, "unpaired", "upper", cfg)
        assert target[3] is person[3]  # P* is posed and framed as P's photo
        # P* is the exact render of (B, g, l_B, pose b) lit as P's photo, with its exact IUV.
        t = world.render(*target, H, W)
        np.testing.assert_array_equal(ex["target_iuv"], t.iuv)
        np.testing.assert_array_equal(ex["target_parse"], t.parse)
        p, p_lit = _clean_photo(seed, split, index, person, cfg)
        lighting = dataset.photo_conditions(seed, split, index, "person", cfg).lighting
        np.testing.assert_array_equal(ex["target_image"], effects.light(t.image, lighting))
        # Outside both garments P* is P's photo exactly (same lighting, camera, hair, background).
        keep = (t.parse != 1) & (p.parse != 1)
        np.testing.assert_array_equal(ex["target_image"][keep], p_lit[keep])
        # Masks come from the exact parsing; only the IUV and the photos the method sees carry errors.
        np.testing.assert_array_equal(ex["person_mask"][..., 0], p.parse == 1)
        changed_iuv += not np.array_equal(ex["person_iuv"], p.iuv)
        changed_iuv += not np.array_equal(ex["model_iuv"], world.render(*model, H, W).iuv)
        changed_image += not np.array_equal(ex["person_image"], p_lit)
        densepose.check_iuv(ex["person_iuv"], "estimated IUV")
    has_errors = cfg.border_px or cfg.uv_drift or cfg.drop_prob or cfg.speckle or cfg.swap_prob
    assert (changed_iuv > 8) == bool(has_errors), changed_iuv
    assert (changed_image > 4) == (cfg.jpeg_quality[1] > 0), changed_image


def test_paired_target_is_the_clean_photo_of_the_person():
    cfg = effects.PRESETS["hard"]
    ex = dataset.make_example(1, "train", 2, H, W, "paired", world_cfg=cfg)
    _, person, _ = dataset.example_people(1, "train", 2, "paired", "upper", cfg)
    _, p_lit = _clean_photo(1, "train", 2, person, cfg)
    np.testing.assert_array_equal(ex["target_image"], p_lit)
    diff = np.abs(ex["person_image"].astype(int) - ex["target_image"]).mean()
    assert 0 < diff < 12  # JPEG only: close, not equal


def test_each_effect_does_what_it_names():
    idn, up, lo, pose = _random_person(3)
    exact = world.render(idn, up, lo, pose, 128, 96).iuv
    fg = exact[..., 0] > 0
    rng = lambda: np.random.default_rng(0)
    grown = effects._grow(exact)
    assert (grown[..., 0] > 0).sum() > fg.sum() and np.array_equal(grown[fg], exact[fg])
    assert (effects._shrink(exact)[..., 0] > 0).sum() < fg.sum()
    drift = effects.estimate_iuv(exact, rng(), effects.WorldConfig(uv_drift=10.0))
    assert np.array_equal(drift[..., 0], exact[..., 0])
    d = np.abs(drift[..., 1:].astype(int) - exact[..., 1:])
    assert 0 < d.max() <= 10 and not d[~fg].any()
    dropped = effects.estimate_iuv(exact, rng(), effects.WorldConfig(drop_prob=1.0))
    assert np.isin(exact[..., 0], densepose.HANDS).any()
    assert not np.isin(dropped[..., 0], densepose.HANDS).any()
    swapped = effects.estimate_iuv(exact, rng(), effects.WorldConfig(swap_prob=1.0))
    np.testing.assert_array_equal(swapped[..., 0][exact[..., 0] == 23], 24)
    np.testing.assert_array_equal(swapped[..., 0][exact[..., 0] == 2], 2)
    holes = effects.estimate_iuv(exact, rng(), effects.WorldConfig(speckle=0.1))
    assert 0.05 < 1 - (holes[..., 0] > 0).sum() / fg.sum() < 0.15
    # Back view: DensePose's back parts, never shown from the front; the person's right on image right.
    rest = world.Pose(id="rest", lean=0.0, head_tilt=0.0, shoulder=(0.2, 0.2), elbow=(0.0, 0.0),
                      arm_front=(True, True), hip=(0.1, 0.1), knee=(0.0, 0.0), zoom=1.0, shift=0.0, back=True)
    i_back = world.render(idn, up, lo, rest, 128, 96).iuv[..., 0]
    assert np.isin(i_back, world.BACK_LABELS).sum() > 200
    assert not np.isin(exact[..., 0], world.BACK_LABELS).any()
    x = np.broadcast_to(np.arange(96), i_back.shape)
    for right, left in ((3, 4), (7, 8), (11, 12), (23, 24)):
        assert x[i_back == right].mean() > x[i_back == left].mean()  # the person's right on image right
    # A loose top covers pixels the body chart does not (the IUV there is background or legs).
    loose = dataclasses.replace(up, loose=1.0, hem=0.4)
    r = world.render(idn, loose, lo, pose, 128, 96)
    off = (r.parse == 1) & ~np.isin(r.iuv[..., 0], densepose.GARMENT_PARTS["upper"])
    assert off.sum() > 30
    # Long hair hides part of the top: torso pixels (by IUV) that are not garment in the parsing.
    hairy = dataclasses.replace(idn, hair_length=0.5)
    r = world.render(hairy, up, lo, pose, 128, 96)
    plain = world.render(idn, up, lo, pose, 128, 96)
    hidden = (plain.parse == 1) & (r.parse == 0)
    assert hidden.sum() > 20 and np.array_equal(r.iuv, plain.iuv)
    # Lighting multiplies; JPEG only approximates.
    lit = effects.light(plain.image, effects.Lighting(1.2, (1.0, 1.0, 1.0), 0.0, 0.0, 0.0, 0.0))
    np.testing.assert_array_equal(lit, np.clip(np.round(plain.image * np.float32(1.2)), 0, 255))
    assert 0 < np.abs(effects.jpeg(plain.image, 40).astype(int) - plain.image).mean() < 10


@pytest.mark.parametrize("name", ["medium", "hard"])
def test_harder_worlds_are_deterministic_with_disjoint_splits(name):
    a = dataset.make_examples(5, "test", 4, H, W, world_cfg=name)
    b = dataset.make_examples(5, "test", 4, H, W, world_cfg=name)
    easy = dataset.make_examples(5, "test", 4, H, W)
    for x, y, e in zip(a, b, easy):
        for key in data_schema.ARRAY_KEYS:
            assert x[key].tobytes() == y[key].tobytes()
        assert x["person_image"].tobytes() != e["person_image"].tobytes()
    for what in ("identity", "upper", "lower"):
        train, test = dataset.pool(0, "train", what, name), dataset.pool(0, "test", what, name)
        assert not {m.params() for m in train} & {m.params() for m in test}
    ident = dataset.pool(0, "train", "identity", name)
    assert 0.1 < np.mean([m.hair_length > 0 for m in ident]) < 0.7
    assert 0.1 < np.mean([m.loose > 0 for m in dataset.pool(0, "train", "upper", name)]) < 0.8


def test_presets_from_the_cli_and_the_training_config(tmp_path):
    sheet = tmp_path / "hard.png"
    assert cli.main(["--out", str(tmp_path / "d"), "--height", "64", "--width", "48", "--num_train", "1",
                     "--num_test", "1", "--preset", "hard", "--contact_sheet", str(sheet)]) == 0
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["world"]["name"] == "hard"
    first = dataset.make_examples(0, "test", 1, 64, 48, world_cfg="hard")[0]
    np.testing.assert_array_equal(np.asarray(Image.open(sheet))[12:12 + 128:2, 60:60 + 96:2],
                                  first["model_image"])
    with pytest.raises(SystemExit):
        cli.main(["--out", str(tmp_path / "e"), "--preset", "extreme"])
    with pytest.raises(ValueError, match="unknown 'extreme'"):
        effects.preset("extreme")
    assert config_schema.WORLD_PRESETS == tuple(effects.PRESETS)


# The synthetic world on the users' road (m2e_jax/synthetic/records.py): folder -> builder -> records.
RECORD_SPEC = records.WorldSpec(seed=2, height=32, width=32, num_train=6, num_test=3, world="medium")


def _by_ids(data_dir: str, split: str) -> dict[tuple[str, str], dict]:
    src = tfds_source.load_source(data_dir, records.config_name(RECORD_SPEC), split, with_meta=True)
    return {(r["model_id"], r["person_id"]): r for r in src}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """RECORD_SPEC's records, built once for the module: (DATA_DIR, the TFDS data_dir returned)."""
    data_dir = tmp_path_factory.mktemp("records")
    return data_dir, records.ensure_records(data_dir, RECORD_SPEC)


def test_records_hold_the_worlds_pixels_built_from_its_folder(built):
    """Every field equals make_examples' bit for bit, except a paired target, which is P's photo as
    given (the medium world JPEGs P), as in every real paired dataset."""
    data_dir, root = built
    photos = Path(root) / "photos"
    assert {p.name for p in (photos / "test").iterdir()} == {"images", "pairs.csv", "triplets.csv"}
    assert list((photos / "test" / "images").glob("*_IUV.png"))
    s = RECORD_SPEC
    for split, num in (("train", s.num_train), ("test", s.num_test)):
        got = _by_ids(root, split)
        examples = dataset.make_examples(s.seed, split, num, s.height, s.width, s.paired_fraction,
                                         s.garment_kind, s.world)
        assert len(got) == num
        for ex in examples:
            rec = got[(ex["model_id"], ex["person_id"])]
            for key in data_schema.KEYS:
                want = ex["person_image"] if key == "target_image" and ex["paired"] else ex[key]
                np.testing.assert_array_equal(rec[key], want, err_msg=f"{split} {ex['model_id']} {key}")
    paired = [ex for ex in examples if ex["paired"]]
    assert paired and any((ex["target_image"] != ex["person_image"]).any() for ex in paired)  # JPEG'd P


def test_records_are_cached_deterministic_and_rebuilt_after_a_killed_build(built, tmp_path):
    data_dir, root = built
    info = Path(tfds_source.dataset_dir(root, records.config_name(RECORD_SPEC))) / "dataset_info.json"
    stamp = info.stat().st_mtime_ns
    assert records.ensure_records(data_dir, RECORD_SPEC) == root and info.stat().st_mtime_ns == stamp
    # A killed build: the photos written, the records half written (TFDS's `incomplete.*` folder),
    # and a half-written photo folder of an earlier attempt.
    other = tmp_path / Path(root).name
    shutil.copytree(Path(root) / "photos", other / "photos")
    junk = other / tfds_source.NAME / records.config_name(RECORD_SPEC) / "incomplete.ABC123_1.0.0"
    junk.mkdir(parents=True)
    (junk / "m2e_dataset-train.array_record-00000-of-00001").write_bytes(b"half")
    (other / ".photos.partial-xyz" / "train").mkdir(parents=True)
    photo_stamp = (other / "photos" / "meta.json").stat().st_mtime_ns
    assert records.ensure_records(tmp_path, RECORD_SPEC) == str(other)
    assert not junk.exists() and not (other / ".photos.partial-xyz").exists()
    assert (other / "photos" / "meta.json").stat().st_mtime_ns == photo_stamp  # the photos were reused
    for split in ("train", "test"):  # the same records as the uninterrupted build
        a, b = _by_ids(root, split), _by_ids(str(other), split)
        assert a.keys() == b.keys()
        for k in a:
            for key in data_schema.KEYS:
                np.testing.assert_array_equal(a[k][key], b[k][key])


def test_another_world_setting_gets_its_own_folder():
    spec = records.WorldSpec(0, 64, 48, 8, 2)
    changes = ({"world": "medium"}, {"num_test": 3}, {"seed": 1}, {"paired_fraction": 0.25},
               {"garment_kind": "lower"})
    others = [dataclasses.replace(spec, **kw) for kw in changes]
    assert len({s.folder_name() for s in [spec, *others]}) == 6
    assert spec.folder_name() == records.WorldSpec(0, 64, 48, 8, 2).folder_name()
