"""Pairing, item-disjoint splits and the item-based layouts (DeepFashion In-shop, MVC)."""

import json
from pathlib import Path

import numpy as np
import pytest

from data_prep import build, fixtures
from data_prep.readers import deepfashion, mvc
from m2e_jax import tfds_source
from m2e_jax.records import pairing


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


# ------------------------------------------------------------------ DeepFashion In-shop release

INSHOP = {  # release path (as list_eval_partition.txt names it) -> evaluation_status
    "img/WOMEN/Dresses/id_00000002/01_1_front.jpg": "train",
    "img/WOMEN/Dresses/id_00000002/01_2_side.jpg": "train",
    "img/WOMEN/Dresses/id_00000002/02_1_front.jpg": "train",  # another colour of the same id
    "img/WOMEN/Dresses/id_00000002/02_4_full.jpg": "train",
    "img/MEN/Pants/id_00000080/01_1_front.jpg": "query",
    "img/MEN/Pants/id_00000080/01_3_back.jpg": "gallery",
    "img/MEN/Pants/id_00000081/01_1_front.jpg": "gallery",
    "img/MEN/Pants/id_00000081/01_7_additional.jpg": "gallery",
}
SIZE = (24, 16)


def _inshop_release(root, partition_at="Eval", dump=True):
    """A DeepFashion In-shop release as its README lays it out (mmlab In-shop page): Img/img/<GENDER>/
    <CATEGORY>/id_<8 digits>/<variant>_<n>_<view>.jpg and Eval/list_eval_partition.txt (line 1 the
    count, line 2 `image_name item_id evaluation_status`, rows padded with spaces). DensePose for the
    whole tree as one detectron2 apply_net.py dump (projects/DensePose/apply_net.py, DumpAction:
    `file_name` is each path as given, here the glob `Img/img/*/*/*/*.jpg` run from the release root),
    so the stem 01_1_front appears three times. Plus one photo the partition does not list."""
    rng = np.random.default_rng(0)
    entries = []
    for rel in [*INSHOP, "img/MEN/Pants/id_00000099/01_1_front.jpg"]:
        p = root / "Img" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        fixtures.write_rgb(p, rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))
        labels = rng.integers(1, 25, (20, 12))
        entries.append({"file_name": f"Img/{rel}", "scores": [0.97], "boxes": [[2.0, 2.0, 14.0, 22.0]],
                        "results": [(labels, rng.random((2, 20, 12), dtype=np.float32))]})
    if dump:
        fixtures.write_torch_dump(root / "Img" / "results.pkl", entries)
    lines = [str(len(INSHOP)), "image_name item_id evaluation_status"]
    lines += [f"{rel:<63}{rel.split('/')[3]:<20}{s}" for rel, s in INSHOP.items()]
    d = {"root": root, "Eval": root / "Eval", "Img": root / "Img"}[partition_at]
    d.mkdir(parents=True, exist_ok=True)
    (d / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return entries


def _variant(name):
    """(item id, colour variant) of an In-shop photo name: img/.../id_X/<variant>_<n>_<view>."""
    parts = name.split("/")
    return parts[-2], parts[-1].split("_")[0]


@pytest.mark.parametrize("partition_at,manual", [("Eval", ""), ("root", ""), ("Img", "Img"), ("Eval", "Img")])
def test_inshop_release_pairs_within_item_and_variant(tmp_path, partition_at, manual):
    _inshop_release(tmp_path, partition_at)
    cats = deepfashion.read_deepfashion(tmp_path / manual, num_unpaired=0)
    train, test = cats["train"], cats["test"]
    assert {n + ".jpg" for n in train.images} == {r for r, s in INSHOP.items() if s == "train"}
    assert {n + ".jpg" for n in test.images} == {r for r, s in INSHOP.items() if s != "train"}
    for cat in (train, test):
        assert all(e.paired and e.target == e.person for e in cat.examples)
        assert all(_variant(e.model) == _variant(e.person) for e in cat.examples)  # no pair across colours
    # id_00000002: variants 01 and 02, two views each -> 2 + 2 ordered pairs, never 01 x 02
    assert len(train.examples) == 4 and len(test.examples) == 2 + 2
    assert {e.garment_kind for e in train.examples} == {0} and {e.garment_kind for e in test.examples} == {1}
    # every photo found its own entry in the whole-tree dump although stems repeat across items
    for cat in (train, test):
        for name, ref in cat.images.items():
            assert ref.iuv.dump.file_name == f"Img/{name}.jpg"
    reasons = [p.file + ": " + p.reason for p in train.problems]
    assert len(reasons) == 1 and "id_00000099/01_1_front.jpg: not listed in" in reasons[0]
    assert any("query + gallery -> test" in n for n in train.notes)


def test_inshop_build_at_letterboxed_size_from_the_release_root(tmp_path, capsys):
    _inshop_release(tmp_path / "release")
    assert build.main(["--dataset", "deepfashion", "--manual_dir", str(tmp_path / "release"), "--data_dir",
                       str(tmp_path / "out"), "--height", "32", "--width", "32", "--num_unpaired", "0",
                       "--workers", "0"]) == 0
    out = capsys.readouterr().out
    part = tmp_path / "release" / "Eval" / "list_eval_partition.txt"
    assert f"note: split from {part}: train -> train, query + gallery -> test" in out
    path = tfds_source.dataset_dir(tmp_path / "out", "deepfashion_32x32")
    src = tfds_source.load_source(tmp_path / "out", "deepfashion_32x32", "test", with_meta=True)
    assert len(src) == 4
    for r in src:
        assert _variant(r["model_id"]) == _variant(r["person_id"])
        np.testing.assert_allclose(r["model_transform"], [4 / 3, 0, 5])  # 24x16 -> 32x21, left 5
        assert r["garment_kind"] == 1 and r["paired"] == 1
    report = (Path(path) / "build_report.txt").read_text()
    assert "not listed in" in report and report.count("\n") == 2


def test_inshop_stem_only_dump_is_ambiguous_in_one_line(tmp_path):
    """A dump made from a flat copy of the photos (file_name = bare names) cannot say which
    01_1_front.jpg is which: those photos are skipped with one line saying so; unique stems match."""
    entries = _inshop_release(tmp_path, dump=False)
    for e in entries:
        e["file_name"] = "/scratch/flat/" + e["file_name"].rsplit("/", 1)[1]
    fixtures.write_torch_dump(tmp_path / "Img" / "results.pkl", entries)
    cats = deepfashion.read_deepfashion(tmp_path, num_unpaired=0)
    refs = {n: r.iuv for c in cats.values() for n, r in c.images.items()}
    amb = {n for n, r in refs.items() if r.problem}
    assert amb == {n[:-4] for n in INSHOP if n.endswith("/01_1_front.jpg")}
    (line,) = {refs[n].problem for n in amb if "id_00000002" in n}
    assert "ambiguous stem '01_1_front'" in line and "\n" not in line
    assert refs["img/WOMEN/Dresses/id_00000002/02_4_full"].dump.file_name == "/scratch/flat/02_4_full.jpg"


def test_inshop_without_partition_splits_by_item_and_variant(tmp_path):
    _inshop_release(tmp_path)
    (tmp_path / "Eval" / "list_eval_partition.txt").unlink()
    cats = deepfashion.read_deepfashion(tmp_path, num_unpaired=0, test_fraction=0.5, seed=3)
    split_of = {_variant(n): s for s, c in cats.items() for n in c.images}
    assert len(split_of) == 5  # (id_2, 01), (id_2, 02), (id_80, 01), (id_81, 01), (id_99, 01)
    assert any("split by hash" in n for c in cats.values() for n in c.notes)


# ------------------------------------------------------------------ PATN (Pose-Transfer) crops

def _patn_name(release_path):
    """A release path as Pose-Transfer's tool/generate_fashion_datasets.py renames it: the id folder
    loses its '_', the file's first '_' is kept and the rest joined, all parts concatenated:
    img/MEN/Denim/id_00000080/01_1_front.jpg -> fashionMENDenimid0000008001_1front.jpg."""
    parts = ["fashion"] + release_path.split("/")[1:]
    parts[3] = parts[3].replace("_", "")
    parts[4] = parts[4].split("_")[0] + "_" + "".join(parts[4].split("_")[1:])
    return "".join(parts)


def test_patn_published_split_shares_item_ids_in_other_variants(tmp_path):
    """fashion_data/{train,test}/ + fasion-resize-pairs-{train,test}.csv (`from,to`), as the
    Pose-Transfer README has them downloaded; its train and test lists share item ids (other colour
    variants), which must build as published, not stop."""
    split_of = {"img/MEN/Denim/id_00000080/01_1_front.jpg": "train",
                "img/MEN/Denim/id_00000080/01_2_side.jpg": "train",
                "img/MEN/Denim/id_00000080/02_1_front.jpg": "test",
                "img/MEN/Denim/id_00000080/02_3_back.jpg": "test",
                "img/WOMEN/Blouses_Shirts/id_00006370/03_1_front.jpg": "train"}
    names = {rel: _patn_name(rel) for rel in split_of}
    assert names["img/MEN/Denim/id_00000080/01_1_front.jpg"] == "fashionMENDenimid0000008001_1front.jpg"
    for rel, split in split_of.items():
        (tmp_path / split).mkdir(exist_ok=True)
        fixtures.write_rgb(tmp_path / split / names[rel], np.zeros((8, 8, 3), np.uint8))
    fixtures.write_rgb(tmp_path / "train" / "notdeepfashion.jpg", np.zeros((8, 8, 3), np.uint8))
    r = list(names.values())
    (tmp_path / "fasion-resize-pairs-train.csv").write_text(f"from,to\n{r[0]},{r[1]}\n{r[1]},ghost.jpg\n")
    # written by pandas with its index column, saved on Windows (BOM, CRLF): read the same
    (tmp_path / "fasion-resize-pairs-test.csv").write_bytes(
        f"\ufeff,from,to\r\n0,{r[2]},{r[3]}\r\n1,{r[3]},{r[2]}\r\n".encode())
    cats = deepfashion.read_deepfashion(tmp_path)
    train, test = cats["train"], cats["test"]
    assert train.images[r[0][:-4]].item == "id_00000080/01"
    assert test.images[r[2][:-4]].item == "id_00000080/02"
    assert train.images[r[4][:-4]].item == "id_00006370/03"
    (ex,) = [e for e in train.examples if e.paired]
    assert (ex.model, ex.person, ex.garment_kind) == (r[0][:-4], r[1][:-4], 1)
    assert len([e for e in test.examples if e.paired]) == 2
    reasons = " ".join(p.reason for p in train.problems)
    assert "partner file ghost missing" in reasons and "not a DeepFashion flat name" in reasons


# ------------------------------------------------------------------ MVC

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


def test_mvc_flat_download_items_from_names_or_link_list(tmp_path):
    """A flat download folder. Named <item>_<view>.jpg: the item is the name's head. Named after the
    URLs: the item comes from the JSON link list beside them (image_links.json records: an item
    number and the image URLs; the field names here are those the reader accepts, see
    data_prep/readers/mvc.py: the MVC release's own schema was not available to check against)."""
    flat = tmp_path / "named"
    flat.mkdir()
    for item in ("1001", "1002"):
        for view in ("1", "2", "3"):
            fixtures.write_rgb(flat / f"{item}_{view}.jpg", np.zeros((8, 6, 3), np.uint8))
    (cat,) = mvc.read_mvc(flat, test_fraction=0.0).values()
    assert {r.item for r in cat.images.values()} == {"1001", "1002"}
    assert len(cat.examples) == 2 * 3 * 2 and all(e.model[:4] == e.person[:4] for e in cat.examples)

    urls = tmp_path / "urls"
    urls.mkdir()
    records = []
    for n, (product, colour) in enumerate((("7254374", "3"), ("7254374", "9"))):
        rec = {"itemN": n, "productId": product, "colourId": colour}
        for v in "pab":
            name = f"{product}-{colour}{v}-4x.jpg"
            rec[f"image_url_{v}"] = f"http://www.example.com/images/z/{name}?v=2"
            fixtures.write_rgb(urls / name, np.zeros((8, 6, 3), np.uint8))
        records.append(rec)
    with pytest.raises(ValueError, match=r"cannot tell the item of 6 photo\(s\).*7254374-3a-4x.jpg"):
        mvc.read_mvc(urls)  # no link list: refused, naming a photo, not read as one item
    (urls / "image_links.json").write_text(json.dumps(records))
    (cat,) = mvc.read_mvc(urls, test_fraction=0.0).values()
    assert {r.item for r in cat.images.values()} == {"0", "1"}  # itemN: the two colours are two items
    assert len(cat.examples) == 2 * 3 * 2
    assert all(e.model.split("-")[1][0] == e.person.split("-")[1][0] for e in cat.examples)


def test_mvc_flat_folder_of_unpairable_photos_is_refused(tmp_path):
    for i in range(3):
        fixtures.write_rgb(tmp_path / f"{i}_front.jpg", np.zeros((8, 6, 3), np.uint8))
    with pytest.raises(ValueError, match="no two views of a garment to pair"):
        mvc.read_mvc(tmp_path)


def test_mvc_link_list_without_item_numbers_keeps_colours_apart(tmp_path):
    """A link list whose records carry `productId` and `colourId` but no `itemN` (the field names the
    reader accepts, data_prep/readers/mvc.py; the MVC release's own schema was not available to check
    against): the colour is part of the item, so two colours of one product are two items and no
    pair crosses them (a red shirt is not the target of its blue twin)."""
    records = []
    for product, colour in (("7254374", "3"), ("7254374", "9")):
        rec = {"productId": product, "colourId": colour}
        for v in "pab":
            name = f"{product}-{colour}{v}-4x.jpg"
            rec[f"image_url_{v}"] = f"http://www.example.com/images/z/{name}?v=2"
            fixtures.write_rgb(tmp_path / name, np.zeros((8, 6, 3), np.uint8))
        records.append(rec)
    (tmp_path / "image_links.json").write_text(json.dumps(records))
    (cat,) = mvc.read_mvc(tmp_path, test_fraction=0.0, num_unpaired=4, seed=0).values()
    assert {r.item for r in cat.images.values()} == {"7254374/3", "7254374/9"}
    colour = lambda name: name.split("-")[1][0]
    paired = [e for e in cat.examples if e.paired]
    assert len(paired) == 2 * 3 * 2 and all(colour(e.model) == colour(e.person) for e in paired)
    assert all(colour(e.model) != colour(e.person) for e in cat.examples if not e.paired)
