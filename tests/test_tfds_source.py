"""Reading built records through TFDS's self-describing format: a TFRecord build (what `tfds build
--file_format=tfrecord` writes) is refused in one line that says how to rebuild, not with TFDS's
NotImplementedError; a small split is decoded once and kept."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import benchmark_read, build
from data_prep.m2e_dataset import m2e_dataset_dataset_builder as mb
from m2e_jax import tfds_source


def test_tfrecord_build_is_refused_in_one_line(tmp_path):
    benchmark_read.write_random_folder(tmp_path / "in", 1, 32, 24)
    builder = mb.Builder(config=mb.M2EConfig(source="folder", height=32, width=24),
                         data_dir=str(tmp_path / "out"), file_format="tfrecord")
    config = tfds.download.DownloadConfig(manual_dir=str(tmp_path / "in"))
    builder.download_and_prepare(download_config=config)
    with pytest.raises(ValueError, match=r"records are \['tfrecord'\], random access needs array_record; "
                                         r"rebuild with .*--file_format=array_record") as info:
        tfds_source.load_source(tmp_path / "out", "folder_32x24", "train")
    assert "\n" not in str(info.value)


def test_small_split_is_decoded_once_and_kept(tmp_path):
    """load_source(cache_max_bytes): a split whose decoded examples fit is decoded once per record;
    later reads give equal, read-only arrays (a caller writing into one would change every later
    batch) without touching the records; a larger split streams."""
    benchmark_read.write_random_folder(tmp_path / "in", 2, 32, 24)
    build.build("folder", tmp_path / "in", tmp_path / "out", 32, 24)
    n = len(tfds_source.load_source(tmp_path / "out", "folder_32x24", "train"))
    fits = n * tfds_source.decoded_bytes(32, 24)
    streamed = tfds_source.load_source(tmp_path / "out", "folder_32x24", "train", cache_max_bytes=fits - 1)
    cached = tfds_source.load_source(tmp_path / "out", "folder_32x24", "train", cache_max_bytes=fits)
    reads = []
    inner = cached._source
    cached._source = type("Counting", (), {"__len__": lambda self: len(inner),
                                           "__getitem__": lambda self, i: reads.append(i) or inner[i]})()
    first = [cached[i] for i in range(n)]
    again = [cached[i] for i in range(n)] + [cached[-1]]
    assert sorted(reads) == list(range(n))
    for a, b, c in zip(first, again, [streamed[i] for i in range(n)]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            np.testing.assert_array_equal(a[k], c[k])
    assert not any(v.flags.writeable for v in first[0].values() if isinstance(v, np.ndarray))
    first[0]["paired"] = 7  # the dict is the caller's own
    assert cached[0]["paired"] != 7
