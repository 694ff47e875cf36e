"""Pairing, item-disjoint splits and the item-based layouts (DeepFashion In-shop, MVC)."""

import numpy as np
import pytest

from data_prep import build, fixtures, pairing
from data_prep.readers import deepfashion, mvc
from m2e_jax import tfds_source


def test_items_from_pairs_are_connected_components():
    item = pairing.items_from_pairs(["a", "b", "c", "d", "e"], [("b", "a"), ("c", "b"), ("e", "d")])
    assert item == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "d"}


def test_unpaired_is_seeded_distinct_and_cross_item():
    groups = {"x": ["x1", "x2"], "y": ["y1"], "z": ["z1", "z2", "z3"]}
    a = pairing.unpaired(groups, 10, seed=1, garment_kind=0)
    assert a == pairing.unpaired(groups, 10, seed=1, garment_kind=0)
    assert a != pairing.unpaired(groups, 10, seed=2, garment_kind=0)
    assert len({(e.model, e.person) for e in a}) == 10
    assert all(e.model[0] != e.person[0] and e.target is None and not e.paired for e in a)
    # capacity: 6 photos, 2*1 + 2*3 + 1*3 = 11 cross-item ordered combinations
    assert len(pairing.unpaired(groups, 100, seed=0, garment_kind=0)) == 2 * 11


def test_item_split_is_stable_and_disjoint():
    items = [f"id_{i:08d}" for i in range(400)]
    split = {i: pairing.item_split(i, 0.25, seed=0) for i in items}
    assert split == {i: pairing.item_split(i, 0.25, seed=0) for i in items}
    assert 70 < sum(s == "test" for s in split.values()) < 130
    with pytest.raises(ValueError, match="both 'train' and 'test'"):
        pairing.check_disjoint({"train": {"a", "b"}, "test": {"b"}})


def _deepfashion_tree(root, size=(24, 16)):
    files = {"img/WOMEN/Dresses/id_00000001/01_1_front.jpg": "train",
             "img/WOMEN/Dresses/id_00000001/01_2_side.jpg": "train",
             "img/WOMEN/Dresses/id_00000001/02_1_front.jpg": "train",
             "img/MEN/Pants/id_00000002/01_1_front.jpg": "query",
             "img/MEN/Pants/id_00000002/01_4_full.jpg": "gallery"}
    rng = np.random.default_rng(0)
    for rel in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        fixtures.write_rgb(p, rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        # DensePose outputs in a mirror tree, as users often keep them
        iuv_path = root / "densepose" / p.relative_to(root).parent / (p.stem + "_IUV.png")
        iuv_path.parent.mkdir(parents=True, exist_ok=True)
        fixtures.write_iuv_png(iuv_path, fixtures.person_iuv(*size, (2, 2, 22, 14)))
    (root / "img" / "WOMEN" / "Dresses" / "stray.jpg").write_bytes(b"")
    lines = [str(len(files)), "image_name item_id evaluation_status"]
    lines += [f"{rel} {rel.split('/')[3]} {s}" for rel, s in files.items()]
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


def test_deepfashion_tree(tmp_path):
    _deepfashion_tree(tmp_path)
    cats = deepfashion.read_deepfashion(tmp_path, num_unpaired=0)
    assert sorted(cats) == ["test", "train"]
    train, test = cats["train"], cats["test"]
    assert {r.item for r in train.images.values()} == {"id_00000001"}
    assert {r.item for r in test.images.values()} == {"id_00000002"}
    assert len(train.examples) == 3 * 2 and len(test.examples) == 2
    assert all(e.paired and e.target == e.person and e.model != e.person for e in train.examples)
    assert {e.garment_kind for e in train.examples} == {0} and {e.garment_kind for e in test.examples} == {1}
    assert all(r.iuv is not None and "densepose" in r.iuv.png for r in train.images.values())
    # a file outside the id_ folders is reported, not guessed at
    assert any("stray.jpg" in p.file for p in train.problems)


def test_deepfashion_build_at_letterboxed_size(tmp_path):
    _deepfashion_tree(tmp_path / "df")
    build.build("deepfashion", tmp_path / "df", tmp_path / "out", 32, 32, num_unpaired=0)
    src = tfds_source.load_source(tmp_path / "out", "deepfashion_32x32", "test", with_meta=True)
    assert len(src) == 2
    for r in src:
        assert r["model_id"].split("/")[3] == r["person_id"].split("/")[3] == "id_00000002"
        np.testing.assert_allclose(r["model_transform"], [4 / 3, 0, 5])  # 24x16 -> 32x21, left 5
        assert r["garment_kind"] == 1 and r["paired"] == 1


def test_deepfashion_flat_pair_csv(tmp_path):
    d = tmp_path / "train"
    d.mkdir()
    names = ["fashionMENDenimid0000008001_1front", "fashionMENDenimid0000008001_2side",
             "fashionWOMENBlouses_Shirtsid0000637003_1front"]
    for n in names:
        fixtures.write_rgb(d / f"{n}.jpg", np.zeros((8, 8, 3), np.uint8))
    fixtures.write_rgb(d / "notdeepfashion.jpg", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "fasion-resize-pairs-train.csv").write_text(
        f"from,to\n{names[0]}.jpg,{names[1]}.jpg\n{names[1]}.jpg,missing.jpg\n")
    cats = deepfashion.read_deepfashion(tmp_path)
    cat = cats["train"]
    assert cat.images[names[0]].item == "id_00000080" and cat.images[names[2]].item == "id_00006370"
    (ex,) = [e for e in cat.examples if e.paired]
    assert (ex.model, ex.person, ex.garment_kind) == (names[0], names[1], 1)
    reasons = " ".join(p.reason for p in cat.problems)
    assert "partner file missing" in reasons and "not a DeepFashion flat name" in reasons


def test_mvc_item_folders(tmp_path):
    for item in ("shirt_001", "shirt_002"):
        for view in ("front", "back", "left"):
            p = tmp_path / "images" / item / f"{view}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            fixtures.write_rgb(p, np.zeros((8, 6, 3), np.uint8))
    cats = mvc.read_mvc(tmp_path, test_fraction=0.0, num_unpaired=4, seed=0)
    (cat,) = cats.values()
    paired = [e for e in cat.examples if e.paired]
    assert len(paired) == 2 * 3 * 2
    assert all(e.model.rsplit("/", 1)[0] == e.person.rsplit("/", 1)[0] for e in paired)
    unp = [e for e in cat.examples if not e.paired]
    assert len(unp) == 4 and all(e.model.rsplit("/", 1)[0] != e.person.rsplit("/", 1)[0] for e in unp)
