"""Reading built records through TFDS's self-describing format: a TFRecord build (what `tfds build
--file_format=tfrecord` writes) is refused in one line that says how to rebuild, not with TFDS's
NotImplementedError."""

import pytest
import tensorflow_datasets as tfds

from data_prep import benchmark_read
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
