"""The infer command: restore in a fresh process on files in the real DensePose formats, agreement
with the in-process model, batch == single, full-resolution paste-back, and one-line errors."""

import glob
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import synthetic
from data_prep import fixtures
from m2e_jax import checkpointing, checkpoints, densepose, infer, input_pipeline, tryon_pipeline
from m2e_jax.models import tryon
from m2e_jax.readers import images
from m2e_jax.synthetic import dataset
from tests import processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP = 3


def random_params(shapes, seed: int):
    """He-initialised kernels, perturbed norm scales and biases: weights no fresh init reproduces."""
    rng = np.random.default_rng(seed)

    def one(path, s):
        name = jax.tree_util.keystr(path)
        if len(s.shape) >= 2:
            return (rng.normal(size=s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))).astype(s.dtype)
        base = 1.0 if "scale" in name else 0.0
        return (base + 0.1 * rng.normal(size=s.shape)).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(one, shapes)


def write_checkpoint(workdir, cfg, step: int, params=None, seed: int = 0):
    """A finished training step `step` of `cfg` in `workdir`'s trainer layout: {"step", "params"},
    the generators `params` or random_params of `cfg`'s shapes. Returns the params written."""
    if params is None:
        params = random_params(checkpointing.generator_shapes(cfg.model), seed)
    with checkpoints.Checkpointer(os.path.join(str(workdir), "checkpoints"), async_save=False) as ck:
        ck.save(step, {"step": np.int32(step), "params": params}, cfg)
    return params


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A workdir with a checkpoint in the trainer's layout, and synthetic photo folders on disk."""
    root = tmp_path_factory.mktemp("infer")
    cfg = synthetic.get_config("test")
    cfg.dataset.data_dir = str(root / "data")
    params = random_params(checkpointing.generator_shapes(cfg.model), seed=1)
    # Other subtrees (optimizer state) sit beside the generators, as in train.py's state.
    opt = {"pan": jax.tree.map(np.zeros_like, params["pan"])}
    state = {"step": np.int32(STEP), "params": params, "opt": opt}
    with checkpoints.Checkpointer(str(root / "work" / "checkpoints"), async_save=False) as ck:
        ck.save(STEP, state, cfg)
    dataset.write_dataset(root / "syn", 0, 32, 32, 0, 4)
    dataset.write_dataset(root / "syn_big", 0, 64, 48, 0, 2)
    examples = dataset.make_examples(0, "test", 4, 32, 32)
    forward = jax.jit(lambda p, b: tryon.tryon_forward(p, tryon.prepare_batch(b, cfg.model), cfg.model))
    # The in-process model, one example at a time, on the arrays the files were written from.
    ref = {}
    for ex in examples:
        batch = input_pipeline.stack_examples([{k: v for k, v in ex.items()}])
        out = jax.device_get(forward(params, batch))
        ref[(ex["model_id"], ex["person_id"])] = {k: np.asarray(v[0]) for k, v in out.items()}
    return {"root": root, "workdir": str(root / "work"), "cfg": cfg, "examples": examples, "ref": ref,
            "images": root / "syn" / "test" / "images"}


def u8(x):
    return np.clip(np.round((np.asarray(x) + 1) * 127.5), 0, 255).astype(np.uint8)


def assert_close_u8(got, want):
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


def run_cli(*args):
    env = processes.cpu_env(1)  # one device, as a user's fresh process has
    return subprocess.run([sys.executable, "-m", "m2e_jax.infer", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_batch_cli_in_fresh_process_equals_in_process_model(world, tmp_path):
    out_dir = tmp_path / "out"
    triplets = world["root"] / "syn" / "test" / "triplets.csv"
    # 3 pairs in batches of 2: the last batch is padded; each result must equal the model run alone.
    r = run_cli("--workdir", world["workdir"], "--pairs", str(triplets), "--output_dir", str(out_dir),
                "--batch_size", "2")
    assert r.returncode == 0, r.stderr
    unpaired = [ex for ex in world["examples"] if not ex["paired"]]
    assert len(unpaired) == 3
    for ex in unpaired:
        got = images.read_rgb(out_dir / f"{ex['model_id']}__{ex['person_id']}.png")
        assert_close_u8(got, u8(world["ref"][(ex["model_id"], ex["person_id"])]["output"]))
    assert sorted(os.listdir(out_dir)) == sorted(f"{e['model_id']}__{e['person_id']}.png" for e in unpaired)


def test_single_cli_with_dump_and_stages(world, tmp_path):
    ex = next(e for e in world["examples"] if not e["paired"])
    d = world["images"]
    person = d / f"{ex['person_id']}.png"
    iuv = ex["person_iuv"]
    dump = tmp_path / "results.pkl"
    fixtures.write_torch_dump(dump, [{"file_name": f"photos/{person.name}", "scores": [0.9],
                                      "boxes": [[0, 0, 32, 32]],
                                      "results": [(iuv[..., 0], np.moveaxis(iuv[..., 1:], -1, 0) / 255.0)]}])
    out = tmp_path / "res" / "tryon.png"
    r = run_cli("--checkpoint", os.path.join(world["workdir"], "checkpoints"), "--model_image",
                str(d / f"{ex['model_id']}.png"), "--person_image", str(person), "--person_iuv", str(dump),
                "--output", str(out), "--save_stages")
    assert r.returncode == 0, r.stderr
    ref = world["ref"][(ex["model_id"], ex["person_id"])]
    got = images.read_rgb(out)
    assert_close_u8(got, u8(ref["output"]))
    names = infer.stage_files(str(out))
    np.testing.assert_array_equal(images.read_rgb(names["output"]), got)  # network size == photo size
    for key in ("warped", "aligned", "refined"):
        assert_close_u8(images.read_rgb(names[key]), u8(ref[key]))
    sheet = images.read_rgb(names["stages"])
    assert sheet.shape == (32, 6 * 32, 3)
    np.testing.assert_array_equal(sheet[:, 32:64], ex["person_image"])
    assert not glob.glob(str(out.parent / ".*tmp*"))


@pytest.mark.parametrize("resolution", tryon_pipeline.RESOLUTIONS)
def test_any_photo_size_keeps_the_person_outside_the_garment(world, tmp_path, capsys, resolution):
    d = world["root"] / "syn_big" / "test" / "images"
    rows = (world["root"] / "syn_big" / "test" / "triplets.csv").read_text().splitlines()[1:]
    model, person, _ = rows[0].split(",")
    out = tmp_path / "big.png"
    rc = infer.main(["--workdir", world["workdir"], "--model_image", str(d / f"{model}.png"),
                     "--person_image", str(d / f"{person}.png"), "--output", str(out),
                     "--resolution", resolution])
    assert rc == 0, capsys.readouterr().err
    p = images.read_rgb(d / f"{person}.png")
    got = images.read_rgb(out)
    assert got.shape == p.shape == (64, 48, 3)
    changed = np.any(got != p, axis=-1)
    # Changes stay inside the upper-garment parts grown by the network's dilations (2 + 3 + 2 px at
    # 32x32 is 14 px at 64x48, +1 for bilinear upsampling, +1 for the nearest-neighbour IUV
    # downsampling): face, legs, background untouched at full resolution.
    iuv = images.read_iuv_rgb_png(d / f"{person}_IUV.png")
    parse = images.read_labels(d / f"{person}_parse.png")
    allowed = densepose.garment_region(iuv[None], "upper", 16, (parse == 1)[None, ..., None])[0, ..., 0] > 0
    assert changed.sum() > 20 and not np.any(changed & ~allowed)
    assert np.mean(~allowed) > 0.2


@pytest.fixture(scope="module")
def pass_through(world, tmp_path_factory):
    """Two checkpoints of one parse_region network whose FTN passes its input composite through
    (model.ftn_mask_offset=30: mask m = 1), so P' = P wherever FTN's replace region is 0 (the
    failure of issue 15.2): one trained with parsing maps only (model.parse_dropout=0), one with
    parse_dropout=0.5. And a folder of 64x48 photos (the network is 32x32) with their DensePose
    `_IUV.png` and no parsing maps."""
    root = tmp_path_factory.mktemp("pass_through")
    params = random_params(checkpointing.generator_shapes(world["cfg"].model), seed=2)
    workdirs = {}
    for drop in (0.0, 0.5):
        cfg = synthetic.get_config("test")
        cfg.model.update(ftn_mask_offset=30.0, parse_dropout=drop)
        assert cfg.model.parse_region
        workdirs[drop] = str(root / f"work_{drop}")
        write_checkpoint(workdirs[drop], cfg, STEP, params)
    src = world["root"] / "syn_big" / "test"
    model, person, _ = (src / "triplets.csv").read_text().splitlines()[1].split(",")
    photos = root / "photos"
    photos.mkdir()
    for name in (model, person):
        for suffix in (".png", "_IUV.png"):
            (photos / f"{name}{suffix}").write_bytes((src / "images" / f"{name}{suffix}").read_bytes())
    return {"workdirs": workdirs, "photos": photos, "model": model, "person": person,
            "parse_dir": src / "images"}


def _tryon(capsys, workdir, model, person, out, *extra):
    capsys.readouterr()
    rc = infer.main(["--workdir", workdir, "--model_image", str(model), "--person_image", str(person),
                     "--output", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 0, err
    return images.read_rgb(out), [ln for ln in err.splitlines() if ln.strip()]


def test_densepose_only_tryon_replaces_the_garment_region_at_full_resolution(pass_through, tmp_path, capsys):
    """No parsing maps (DensePose alone): the replace region is R_P, so the garment region changes,
    at the photo's 64x48 (twice the network's size); every pixel outside R_P keeps its bytes."""
    d = pass_through["photos"]
    person = images.read_rgb(d / f"{pass_through['person']}.png")
    got, warnings = _tryon(capsys, pass_through["workdirs"][0.5], d / f"{pass_through['model']}.png",
                           d / f"{pass_through['person']}.png", tmp_path / "out.png")
    assert warnings == []  # trained with parse_dropout: DensePose alone is a case it knows
    assert got.shape == person.shape == (64, 48, 3)
    iuv = images.read_iuv_rgb_png(d / f"{pass_through['person']}_IUV.png")
    # configs/synthetic.py: no dilation or feather, so R~ = R_P = the upper-garment parts.
    region = densepose.garment_region(iuv[None], "upper", 0)[0, ..., 0] > 0
    changed = np.any(got != person, axis=-1)
    assert region.mean() > 0.05 and not np.any(changed & ~region)
    assert changed[region].mean() > 0.5, changed[region].mean()


def test_checkpoint_needing_parsing_maps_says_so(pass_through, tmp_path, capsys):
    d = pass_through["photos"]
    model, person = d / f"{pass_through['model']}.png", d / f"{pass_through['person']}.png"
    got, warnings = _tryon(capsys, pass_through["workdirs"][0.0], model, person, tmp_path / "a.png")
    assert len(warnings) == 1 and warnings[0].startswith("m2e_jax.infer: warning: "), warnings
    assert "needs parsing maps" in warnings[0] and "model.parse_dropout" in warnings[0]
    assert np.any(got != images.read_rgb(person))  # still a try-on (R_P replaced), not P
    # With both parsing maps given: no warning.
    parse = pass_through["parse_dir"]
    _, warnings = _tryon(capsys, pass_through["workdirs"][0.0], model, person, tmp_path / "b.png",
                         "--model_parse", str(parse / f"{pass_through['model']}_parse.png"),
                         "--person_parse", str(parse / f"{pass_through['person']}_parse.png"))
    assert warnings == []


def test_nothing_to_replace_says_why(pass_through, tmp_path, capsys):
    """A person whose DensePose has none of the garment's parts comes back unchanged, with a reason."""
    d = pass_through["photos"]
    iuv = images.read_iuv_rgb_png(d / f"{pass_through['person']}_IUV.png").copy()
    upper = densepose.garment_parts_mask(iuv, "upper")[..., 0] > 0
    iuv[upper] = 0
    assert iuv[..., 0].max() > 0  # head, hands, legs: still a person
    fixtures.write_iuv_png(tmp_path / "bare_IUV.png", iuv)
    person = d / f"{pass_through['person']}.png"
    got, warnings = _tryon(capsys, pass_through["workdirs"][0.5], d / f"{pass_through['model']}.png",
                           person, tmp_path / "out.png", "--person_iuv", str(tmp_path / "bare_IUV.png"))
    np.testing.assert_array_equal(got, images.read_rgb(person))
    assert len(warnings) == 1 and "none of the upper garment's body parts" in warnings[0], warnings


def _bad_inputs(world, tmp_path):
    d = world["images"]
    ex = world["examples"][0]
    m, p = str(d / f"{ex['model_id']}.png"), str(d / f"{ex['person_id']}.png")
    small = tmp_path / "small_IUV.png"
    fixtures.write_iuv_png(small, ex["person_iuv"][:, :30])
    empty = tmp_path / "empty_IUV.png"
    fixtures.write_iuv_png(empty, np.zeros_like(ex["person_iuv"]))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    fixtures.write_iuv_png(tmp_path / "broken_IUV.png", ex["person_iuv"])
    wd, nowhere = world["workdir"], str(tmp_path / "nowhere")
    return {
        "missing checkpoint": (["--workdir", nowhere, "--model_image", m, "--person_image", p],
                               "no such checkpoint directory"),
        "other config": (["--workdir", wd, "--config", os.path.join(ROOT, "configs", "synthetic.py"),
                          "--model_image", m, "--person_image", p],
                         r"checkpoint from another config: params\['(pan|trn|ftn)'\]\[.*(missing|has shape)"),
        "iuv size": (["--workdir", wd, "--model_image", m, "--person_image", p, "--person_iuv", str(small)],
                     "small_IUV.png: IUV is 32x30 but the photo is 32x32"),
        "no person": (["--workdir", wd, "--model_image", m, "--person_image", p, "--person_iuv", str(empty)],
                      "empty_IUV.png: no person found"),
        "unreadable": (["--workdir", wd, "--model_image", str(broken), "--person_image", p],
                       "broken.png: unreadable image"),
    }


@pytest.mark.parametrize("case", ["missing checkpoint", "other config", "iuv size", "no person"])
def test_bad_input_is_one_line_and_writes_nothing(world, tmp_path, capsys, case):
    import re

    argv, pattern = _bad_inputs(world, tmp_path)[case]
    out = tmp_path / "out" / "o.png"
    capsys.readouterr()
    rc = infer.main(argv + ["--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.startswith("m2e_jax.infer: error: ") and "\n" not in err, err
    assert re.search(pattern, err), err
    assert not out.parent.exists() or not os.listdir(out.parent)


def test_unreadable_image_in_a_fresh_process(world, tmp_path):
    argv, pattern = _bad_inputs(world, tmp_path)["unreadable"]
    out = tmp_path / "o.png"
    r = run_cli(*argv, "--output", str(out))
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and pattern in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_restores_what_the_trainer_wrote(tmp_path):
    """A checkpoint written by train_and_evaluate (full state: optimizers, discriminators) restores
    into exactly the trained generator weights, with the config saved beside it."""
    from m2e_jax import train

    cfg = synthetic.get_config("test")
    cfg.dataset.data_dir = str(tmp_path / "data")
    workdir = str(tmp_path / "w")
    train.train_and_evaluate(cfg, workdir, max_steps=2)
    config, params, step_dir = checkpointing.load_generators(checkpointing.find_step(workdir=workdir))
    assert os.path.basename(step_dir) == "2"
    assert config.model.to_dict() == cfg.model.to_dict()
    init = train.init_state(cfg)
    with checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")) as ck:
        trained = ck.restore(2, init)["params"]
    moved = False
    for net in ("pan", "trn", "ftn"):
        for got, want, start in zip(*(jax.tree.leaves(t[net]) for t in (params, trained, init["params"]))):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
            moved |= not np.array_equal(np.asarray(want), np.asarray(start))
    assert moved  # two steps of training changed the generators, so the comparison means something


def test_model_parsing_alone_is_kept_when_the_checkpoint_trained_on_it(pass_through, tmp_path, capsys):
    """model.ftn_paint with model.person_parse_dropout > 0 (configs/synthetic.py): a model photo's
    parsing map without the person's is used (models.tryon.paint_region, R_P repainted around M's
    garment), silently; a checkpoint without person_parse_dropout ignores it and says so."""
    d, parse = pass_through["photos"], pass_through["parse_dir"]
    model, person = d / f"{pass_through['model']}.png", d / f"{pass_through['person']}.png"
    model_parse = ("--model_parse", str(parse / f"{pass_through['model']}_parse.png"))
    workdir = pass_through["workdirs"][0.5]
    trained = synthetic.get_config("test").model  # the fixture's checkpoints, parse_dropout aside
    assert trained.ftn_paint and trained.person_parse_dropout > 0
    alone, warnings = _tryon(capsys, workdir, model, person, tmp_path / "a.png", *model_parse)
    assert warnings == []
    bare, _ = _tryon(capsys, workdir, model, person, tmp_path / "b.png")
    assert np.any(alone != bare)  # M's map changed the regions FTN paints
    # The same photos for a checkpoint that never saw M's map alone: both maps ignored, one line.
    cfg = synthetic.get_config("test")
    cfg.model.update(person_parse_dropout=0.0, parse_dropout=0.5)
    other = str(tmp_path / "other")
    write_checkpoint(other, cfg, STEP, seed=2)
    _, warnings = _tryon(capsys, other, model, person, tmp_path / "c.png", *model_parse)
    assert len(warnings) == 1 and "while the other photo has one; both are ignored" in warnings[0], warnings


def test_relit_checkpoint_relights_the_full_resolution_tryon(pass_through, tmp_path, capsys):
    """model.ftn_relight through infer's full-resolution path: the gain map travels with FTN's other
    maps to the photo's size (64x48 for a 32x32 network), so a checkpoint whose gain head says
    "redder, bluer-less" gives P' redder and less blue than the same checkpoint at gain 1 where the
    garment is pasted (FTN's mask is saturated: ftn_mask_offset 30), and nothing else changes."""
    d = pass_through["photos"]
    model, person = d / f"{pass_through['model']}.png", d / f"{pass_through['person']}.png"
    cfg = synthetic.get_config("test")
    cfg.model.update(ftn_mask_offset=30.0, ftn_relight="gain")
    params = random_params(checkpointing.generator_shapes(cfg.model), seed=2)
    dense = params["ftn"]["relight"]["Dense_0"]
    outs = {}
    for name, bias in (("one", [0.0, 0.0, 0.0]), ("lit", [1.0, 0.0, -1.0])):
        dense["kernel"] = np.zeros_like(dense["kernel"])
        dense["bias"] = np.asarray(bias, np.float32)
        workdir = str(tmp_path / name)
        write_checkpoint(workdir, cfg, STEP, params)
        outs[name], _ = _tryon(capsys, workdir, model, person, tmp_path / f"{name}.png")
    one, lit = (outs[k].astype(np.float32) for k in ("one", "lit"))
    assert one.shape == lit.shape == (64, 48, 3)
    moved = np.any(one != lit, axis=-1)
    assert moved.sum() > 20
    diff = (lit - one)[moved].mean(0)
    assert diff[0] > 3 and diff[2] < -3 and abs(diff[1]) < 1, diff
