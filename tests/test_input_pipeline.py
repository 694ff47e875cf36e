"""Input pipeline and schedule: deterministic, resumable order; stream separation; host split."""

import ml_collections
import numpy as np
import pytest

from configs import synthetic
from m2e_jax import data_schema, input_pipeline, schedule

H = W = 8


def fake_source(num: int, paired: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Examples whose model_image[0, 0, 0] holds their index (so batches can be traced back): a list
    has the random access (`len`, `[i]`) the pipeline asks of a source, and no `paired_flags`."""
    out = []
    for i in range(num):
        ex = data_schema.empty_example(H, W)
        ex["model_image"][0, 0, 0] = ex["person_image"][0, 0, 0] = i
        ex["target_image"][0, 0, 0] = i + 1
        ex["has_target"], ex["paired"] = np.int32(1), np.int32(paired[i])
        out.append(ex)
    return out


def config(batch=4, pan=3, trn=0, ftn=0, joint=6, p=1, u=1, seed=0):
    c = synthetic.get_config("test")
    c.seed, c.batch_size = seed, batch
    c.schedule.update(pan_steps=pan, trn_steps=trn, ftn_steps=ftn, joint_steps=joint,
                      paired_per_cycle=p, unpaired_per_cycle=u)
    return c


def ids(batch, key="model_image"):
    return batch[key][:, 0, 0, 0].astype(int).tolist()


def test_schedule_stages_and_alternation():
    s = ml_collections.ConfigDict(dict(pan_steps=2, trn_steps=1, ftn_steps=0, joint_steps=5,
                                       paired_per_cycle=1, unpaired_per_cycle=1))
    plans = [schedule.plan(i, s) for i in range(9)]
    assert [p.stage for p in plans] == [1, 1, 2, 4, 4, 4, 4, 4, 4]  # empty stage 3 skipped; past end: last
    assert [p.paired for p in plans[3:8]] == [True, False, True, False, True]
    paired_pos = [p.position for p in plans if p.paired]
    unpaired_pos = [p.position for p in plans if not p.paired]
    assert paired_pos == list(range(len(paired_pos)))  # each stream is consumed without gaps
    assert unpaired_pos == list(range(len(unpaired_pos)))
    s.update(paired_per_cycle=2, unpaired_per_cycle=1)
    assert [schedule.plan(i, s).paired for i in range(3, 9)] == [True, True, False] * 2


def test_batches_are_a_pure_function_of_the_step():
    paired = np.array([1, 0] * 10)
    a = input_pipeline.TrainData(fake_source(20, paired), config())
    b = input_pipeline.TrainData(fake_source(20, paired), config())
    run = [ids(a.batch(s)) for s in range(9)]
    resumed = [ids(b.batch(s)) for s in range(5, 9)]  # "resume" at step 5 with a fresh object
    assert run[5:] == resumed
    streamed = [ids(batch) for _, batch in a.iterate(5, 9, prefetch=2)]
    assert streamed == run[5:]
    threaded = list(a.iterate(5, 9, prefetch=3, threads=3))  # three batches assembled at once
    assert [s for s, _ in threaded] == [5, 6, 7, 8] and [ids(b) for _, b in threaded] == run[5:]
    for (_, x), s in zip(threaded, range(5, 9)):
        y = a.batch(s)
        assert set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in y)
    other_seed = input_pipeline.TrainData(fake_source(20, paired), config(seed=1))
    assert [ids(other_seed.batch(s)) for s in range(9)] != run


def parsed_source():
    """20 examples, alternately paired, whose two parsing masks are non-empty (M's all garment)."""
    source = fake_source(20, np.array([1, 0] * 10))
    for ex in source:
        ex["model_mask"][:] = 1
        ex["person_mask"][:4] = 1
    return source


def train_data(source, **model_fields) -> input_pipeline.TrainData:
    """TrainData of batch 8 with the given model fields; no parsing dropout unless given."""
    c = config(batch=8)
    c.model.update(parse_dropout=0.0, person_parse_dropout=0.0)
    c.model.update(model_fields)
    return input_pipeline.TrainData(source, c)


def test_parse_dropout_zeroes_both_masks_of_whole_rows_deterministically():
    """model.parse_dropout: a share of each batch's rows loses both parsing masks (DensePose alone),
    the same rows on a resumed run and on every host; nothing else changes."""
    source = parsed_source()
    base = train_data(source)
    c = config(batch=8)
    c.model.update(parse_dropout=0.5, person_parse_dropout=0.0)
    drop = input_pipeline.TrainData(source, c)
    dropped = []
    for step in range(12):
        a, b = base.batch(step), drop.batch(step)
        gone = (b["model_mask"].max(axis=(1, 2, 3)) == 0)
        assert np.array_equal(gone, b["person_mask"].max(axis=(1, 2, 3)) == 0)  # both or neither
        np.testing.assert_array_equal(b["model_mask"][~gone], a["model_mask"][~gone])
        np.testing.assert_array_equal(b["person_mask"][~gone], a["person_mask"][~gone])
        for key in data_schema.KEYS:
            if key not in data_schema.MASK_KEYS:
                np.testing.assert_array_equal(b[key], a[key])
        np.testing.assert_array_equal(gone, input_pipeline.parse_dropout_rows(c.seed, step, 8, 0.5))
        dropped.append(gone)
    share = np.mean(dropped)
    assert 0.3 < share < 0.7, share  # 96 rows at rate 0.5
    # Host 1 of 2 gets rows 4..7 of the same global decision.
    half = input_pipeline.TrainData(source, c, process_index=1, process_count=2).batch(5)
    np.testing.assert_array_equal(half["model_mask"].max(axis=(1, 2, 3)) == 0, dropped[5][4:])


def test_person_parse_dropout_zeroes_only_the_persons_mask():
    """model.person_parse_dropout: rows lose P's parsing mask and keep M's (models.tryon.paint_region's
    "M's map only" case), from a stream of their own: parse_dropout's rows are the same with it."""
    source = parsed_source()
    both = train_data(source, parse_dropout=0.5)
    data = train_data(source, parse_dropout=0.5, person_parse_dropout=0.5)
    seed = data.seed
    person_only = []
    for step in range(12):
        a, b = both.batch(step), data.batch(step)
        np.testing.assert_array_equal(b["model_mask"], a["model_mask"])  # M's masks untouched
        rows = input_pipeline.parse_dropout_rows(seed, step, 8, 0.5, person_only=True)
        np.testing.assert_array_equal(b["person_mask"][~rows], a["person_mask"][~rows])
        assert not b["person_mask"][rows].any()
        person_only.append(rows & (a["model_mask"].max(axis=(1, 2, 3)) > 0))
    assert 0.1 < np.mean(person_only) < 0.4, np.mean(person_only)  # ~0.25 of rows keep M's map only
    assert not np.array_equal(input_pipeline.parse_dropout_rows(0, 3, 64, 0.5),
                              input_pipeline.parse_dropout_rows(0, 3, 64, 0.5, person_only=True))


def test_streams_are_separated_and_epochs_cover_every_example():
    paired = np.array([1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1])  # 7 paired, 5 unpaired
    data = input_pipeline.TrainData(fake_source(12, paired), config(batch=7, pan=4, joint=0))
    for step in range(4):
        got = ids(data.batch(step))
        assert all(paired[i] for i in got)
        assert sorted(got) == sorted(np.flatnonzero(paired).tolist())  # batch == epoch here
    data = input_pipeline.TrainData(fake_source(12, paired), config(batch=5, pan=0, joint=8))
    unpaired_batches = [ids(data.batch(s)) for s in range(8) if not schedule.plan(s, data.sched).paired]
    for got in unpaired_batches:
        assert sorted(got) == np.flatnonzero(paired == 0).tolist()
    assert len({tuple(b) for b in unpaired_batches}) > 1  # reshuffled each epoch


def test_process_slices_tile_the_global_batch():
    paired = np.ones(16, np.int32)
    whole = input_pipeline.TrainData(fake_source(16, paired), config(batch=8))
    parts = [input_pipeline.TrainData(fake_source(16, paired), config(batch=8), i, 2) for i in range(2)]
    for step in range(4):
        assert ids(parts[0].batch(step)) + ids(parts[1].batch(step)) == ids(whole.batch(step))
    with pytest.raises(ValueError, match="batch_size=8 not divisible by 3"):
        input_pipeline.TrainData(fake_source(16, paired), config(batch=8), 0, 3)


def test_unpaired_stream_from_pairs_when_the_data_has_none():
    data = input_pipeline.TrainData(fake_source(6, np.ones(6, np.int32)), config(batch=6, pan=0, joint=4))
    batch = data.batch(1)  # joint stage, second step: unpaired
    assert not schedule.plan(1, data.sched).paired
    assert np.all(batch["paired"] == 0) and np.all(batch["has_target"] == 0)
    assert np.all(batch["target_image"] == 0)
    model, person = ids(batch, "model_image"), ids(batch, "person_image")
    assert all(m != p for m, p in zip(model, person))
    assert sorted(model) == list(range(6)) and sorted(person) == list(range(6))


def test_no_pairs_is_an_error():
    with pytest.raises(ValueError, match="no paired examples"):
        input_pipeline.TrainData(fake_source(4, np.zeros(4, np.int32)), config())


def test_eval_batches_pad_with_zero_weight():
    src = fake_source(5, np.ones(5, np.int32))
    got = list(input_pipeline.eval_batches(src, 4, 0))
    assert [ids(b) for b, _ in got] == [[0, 1, 2, 3], [4, 0, 0, 0]]
    assert got[1][1].tolist() == [1, 0, 0, 0]
    assert [ids(b) for b, _ in input_pipeline.eval_batches(src, 2, 3)] == [[0, 1], [2, 0]]
    halves = [list(input_pipeline.eval_batches(src, 4, 0, i, 2)) for i in range(2)]
    assert ids(halves[0][0][0]) + ids(halves[1][0][0]) == [0, 1, 2, 3]


def test_synthetic_source_reads_the_records_it_built_once(tmp_path):
    """source "synthetic": the world written as a folder, built into records, read as "tfds" reads."""
    from m2e_jax import tfds_source

    c = synthetic.get_config("test")
    c.dataset.update(data_dir=str(tmp_path), num_train=4, num_test=3)
    first = input_pipeline.open_source(c, "test")
    assert isinstance(first, tfds_source.M2ESource) and len(first) == 3
    assert len(input_pipeline.open_source(c, "train")) == 4
    (root,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (root / "photos" / "test" / "triplets.csv").is_file()
    (info,) = root.glob("m2e_dataset/synthetic_32x32/1.0.0/dataset_info.json")
    stamp = info.stat().st_mtime_ns
    again = input_pipeline.open_source(c, "test")
    assert info.stat().st_mtime_ns == stamp  # reused, not rebuilt
    for i in range(3):
        data_schema.validate_example(again[i], c.model.height, c.model.width, f"example {i}")
        for k in data_schema.KEYS:
            np.testing.assert_array_equal(again[i][k], first[i][k])
    c.dataset.num_test = 2  # another world setting: its own folder and records
    assert len(input_pipeline.open_source(c, "test")) == 2
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def test_tfds_source_built_by_data_prep(tmp_path):
    """The array_record path: data_prep builds a tiny synthetic config, the pipeline batches it."""
    from data_prep import build

    build.build("synthetic", tmp_path / "manual", tmp_path / "tfds", 32, 32, synthetic_counts=(6, 2))
    c = synthetic.get_config("test")
    c.dataset.update(source="tfds", data_dir=str(tmp_path / "tfds"))
    src = input_pipeline.open_source(c, "train")
    data_schema.validate_example(src[0], 32, 32, "tfds record 0")
    data = input_pipeline.TrainData(src, c)
    flags = input_pipeline.paired_flags(src)
    assert len(data.paired_idx) == int(flags.sum()) > 0
    batch = data.batch(0)
    assert np.all(batch["paired"] == 1) and batch["model_image"].shape == (c.batch_size, 32, 32, 3)
