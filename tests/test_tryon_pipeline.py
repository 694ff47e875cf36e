"""The try-on library (m2e_jax/tryon_pipeline.py): its pure steps on small arrays, TryOn on a tiny
network (a batch, padding, stages, the note on an unchanged result), and the rule that no module
imports a command's code. The commands over it are tested in tests/test_infer.py and test_demo.py.

Files are written in the real formats by data_prep.fixtures: `NAME_IUV.png` as Detectron's
`infer_simple.py` writes it through OpenCV (cv2.imwrite of [I, U, V], so the PNG holds V, U, I)."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from configs import synthetic
from data_prep import fixtures
from m2e_jax import checkpointing, densepose, preprocess
from m2e_jax import tryon_pipeline as pipeline
from m2e_jax.readers.photos import Photo
from m2e_jax.synthetic import dataset
from tests.test_infer import random_params

ROOT = Path(__file__).resolve().parent.parent
UPPER = densepose.GARMENT_KINDS.index("upper")


@pytest.fixture(scope="module")
def examples():
    """Four test-split examples of the synthetic world at 32x32 (paired and unpaired)."""
    return dataset.make_examples(0, "test", 4, 32, 32)


def _photo(parse: bool, size: int = 8) -> Photo:
    zeros = np.zeros((size, size, 3), np.uint8)
    return Photo(zeros, zeros, np.ones((size, size), np.uint8) if parse else None)


# ---------------------------------------------------------------- pure steps

def test_parsing_is_kept_for_both_photos_or_neither():
    both = pipeline.Pair(_photo(True), _photo(True), "m.png", "p.png", "out.png")
    assert pipeline.keep_paired_parsing(both, needs_parsing=True) == (both, [])
    one = dataclasses.replace(both, person=_photo(False))
    kept, notes = pipeline.keep_paired_parsing(one, needs_parsing=False)
    assert kept.model.parse is None and kept.person.parse is None
    assert notes == ["p.png: no parsing map (NAME_parse.png or --*_parse) while the other photo has one; "
                     "both are ignored and the DensePose garment region is replaced"]
    # A checkpoint trained on M's map alone (TryOn.uses_model_parsing_alone) keeps it, silently.
    assert pipeline.keep_paired_parsing(one, needs_parsing=False, model_alone=True) == (one, [])
    # The person's map alone is never a case it trained on.
    other = dataclasses.replace(both, model=_photo(False))
    kept, notes = pipeline.keep_paired_parsing(other, needs_parsing=False, model_alone=True)
    assert kept.person.parse is None and len(notes) == 1 and notes[0].startswith("m.png: no parsing map")


def test_a_checkpoint_that_needs_parsing_maps_says_so_naming_the_result():
    neither = pipeline.Pair(_photo(False), _photo(False), "m.png", "p.png", "out.png")
    assert pipeline.keep_paired_parsing(neither, needs_parsing=False) == (neither, [])
    _, notes = pipeline.keep_paired_parsing(neither, needs_parsing=True)
    assert len(notes) == 1 and notes[0].startswith("out.png: this checkpoint needs parsing maps")
    assert "m.png has none" in notes[0] and "model.parse_dropout > 0" in notes[0]


def test_unchanged_reason_says_why_the_person_came_back():
    person = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    region = np.zeros((4, 4, 1), np.float32)
    assert "none of the upper garment's body parts" in pipeline.unchanged_reason(person, person, region,
                                                                                 "p.png", UPPER)
    region[1:3, 1:3] = 0.5
    reason = pipeline.unchanged_reason(person, person, region, "p.png", UPPER)
    assert reason.startswith("p.png: the try-on equals the person photo inside the upper garment region "
                             "(4 pixels)")
    changed = person.copy()
    changed[2, 2] += 1
    assert pipeline.unchanged_reason(person, changed, region, "p.png", UPPER) is None
    changed = person.copy()
    changed[0, 0] += 1  # a change outside R~ is not a try-on
    assert pipeline.unchanged_reason(person, changed, region, "p.png", UPPER) is not None


def test_an_example_becomes_photos_and_back(examples):
    """example_photos then make_example (at the network's size: the letterbox is the identity)
    gives back the example's images, DensePose and garment masks."""
    for ex in examples:
        model, person = pipeline.example_photos(ex)
        assert set(np.unique(person.parse)) <= {0, int(ex["garment_kind"]) + 1}
        fitted = [preprocess.fit(p.image, p.iuv, 32, 32, p.parse) for p in (model, person)]
        back = pipeline.make_example(*fitted, int(ex["garment_kind"]))
        for key in ("model_image", "model_iuv", "model_mask", "person_image", "person_iuv", "person_mask"):
            np.testing.assert_array_equal(back[key], ex[key], err_msg=key)
        assert back["has_target"] == 0


def test_photo_files_are_found_beside_the_photo_or_named(tmp_path, examples):
    ex = examples[0]
    fixtures.write_rgb(tmp_path / "p.png", ex["person_image"])
    with pytest.raises(pipeline.TryOnError, match=r"p.png: no DensePose output beside the person photo "
                                                  r".*p_IUV.png\); pass --person_iuv"):
        pipeline.photo_ref(str(tmp_path / "p.png"), role="person")
    with pytest.raises(pipeline.TryOnError, match=r"--model_iuv .*gone_IUV.png: file not found"):
        pipeline.photo_ref(str(tmp_path / "p.png"), str(tmp_path / "gone_IUV.png"), role="model")
    fixtures.write_iuv_png(tmp_path / "p_IUV.png", ex["person_iuv"])
    fixtures.write_label_png(tmp_path / "p_parse.png", (ex["person_mask"][..., 0] > 0).astype(np.uint8))
    photo = pipeline.read_photo(pipeline.photo_ref(str(tmp_path / "p.png"), role="person"))
    np.testing.assert_array_equal(photo.image, ex["person_image"])
    np.testing.assert_array_equal(photo.iuv, ex["person_iuv"])
    np.testing.assert_array_equal(photo.parse, ex["person_mask"][..., 0])
    fixtures.write_iuv_png(tmp_path / "p_IUV.png", np.zeros_like(ex["person_iuv"]))
    with pytest.raises(pipeline.TryOnError, match=r"p_IUV.png: no person found"):
        pipeline.read_photo(pipeline.photo_ref(str(tmp_path / "p.png"), role="person"))


def test_config_files_fail_in_one_line(tmp_path):
    with pytest.raises(pipeline.TryOnError, match=r"--config .*nope.py: file not found"):
        pipeline.load_config_file(str(tmp_path / "nope.py"))
    (tmp_path / "bad.py").write_text("def get_config(arg):\n    raise RuntimeError('no ' + str(arg))\n")
    with pytest.raises(pipeline.TryOnError, match=r"bad.py:x: RuntimeError: no x$"):
        pipeline.load_config_file(str(tmp_path / "bad.py") + ":x")
    cfg = pipeline.load_config_file(str(ROOT / "configs" / "synthetic.py") + ":test")
    assert cfg.model.height == 32


# ---------------------------------------------------------------- the networks

def test_tryon_batches_pad_and_say_when_nothing_changed(examples):
    """Three pairs in batches of two (the last padded: one compilation): the same pair gives the same
    try-on in either batch; stages and sheet at the network's size; a person whose DensePose has none
    of the garment's parts comes back unchanged with the reason in its notes."""
    cfg = synthetic.get_config("test")
    net = pipeline.TryOn(cfg, random_params(checkpointing.generator_shapes(cfg.model), seed=4))
    assert net.garment_kind == UPPER and net.checkpoint is None
    a = pipeline.Pair(*pipeline.example_photos(examples[1]), "m.png", "p.png")
    model, person = pipeline.example_photos(examples[2])
    bare_iuv = person.iuv.copy()
    bare_iuv[densepose.garment_parts_mask(bare_iuv, "upper")[..., 0] > 0] = 0
    bare = pipeline.Pair(dataclasses.replace(model, parse=None), Photo(person.image, bare_iuv, None),
                         "m2.png", "bare.png")
    results = net.tryon([a, bare, a], resolution="full", batch_size=2)
    assert len(results) == 3
    np.testing.assert_array_equal(results[0].image, results[2].image)
    first = results[0]
    assert first.image.shape == (32, 32, 3) and first.image.dtype == np.uint8
    assert first.soft_region.shape == (32, 32, 1) and first.notes == ()
    assert np.any(first.image != a.person.image)
    assert set(first.stages) == set(pipeline.STAGES)
    assert all(s.shape == (32, 32, 3) and s.dtype == np.uint8 for s in first.stages.values())
    sheet = first.sheet()
    assert sheet.shape == (32, 6 * 32, 3)
    np.testing.assert_array_equal(sheet[:, 32:64], a.person.image)
    np.testing.assert_array_equal(results[1].image, person.image)
    assert len(results[1].notes) == 1 and results[1].notes[0].startswith(
        "bare.png: DensePose finds none of the upper garment's body parts"), results[1].notes
    # At the network's size both resolutions give FTN's P' itself.
    (network,) = net.tryon([a], resolution="network", batch_size=2)
    np.testing.assert_array_equal(network.image, first.stages["output"])
    np.testing.assert_array_equal(first.image, first.stages["output"])
    with pytest.raises(pipeline.TryOnError, match="--resolution must be one of"):
        net.tryon([a], resolution="half")
