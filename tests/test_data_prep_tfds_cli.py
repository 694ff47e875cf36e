"""`tfds build`, exactly as the README prints it, writes the records `python -m data_prep.build` writes,
in the array_record format the trainer reads.

tfds's command line needs apache-beam and mlcroissant, whose pins conflict with requirements.txt, so
it lives in its own environment (requirements-tfds-build.txt, README "Your own photos -> dataset").
The test uses `.venv-tfds/bin/tfds` in the repository (or the command named by $M2E_TFDS) and is
skipped, saying how to create it, where there is none.
"""

import os
import subprocess
from pathlib import Path

import numpy as np

from data_prep import benchmark_read, build
from m2e_jax import tfds_source
from tests.conftest import side_environment

ROOT = Path(__file__).resolve().parent.parent


def _tfds_command() -> str:
    return side_environment("M2E_TFDS", ".venv-tfds", "tfds", "requirements-tfds-build.txt",
                            ("apache_beam", "mlcroissant"))


def test_tfds_build_as_the_readme_prints_it(tmp_path):
    tfds = _tfds_command()
    benchmark_read.write_random_folder(tmp_path / "photos", 2, 64, 48)
    # the README's line: tfds build data_prep/m2e_dataset --manual_dir ~/photos --data_dir ~/tfds
    #                    --config folder_256x192  (here the smallest predefined size)
    r = subprocess.run([tfds, "build", "data_prep/m2e_dataset", "--manual_dir", str(tmp_path / "photos"),
                        "--data_dir", str(tmp_path / "tfds"), "--config", "folder_64x48"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr[-3000:]
    build.build("folder", tmp_path / "photos", tmp_path / "ours", 64, 48)
    theirs = tfds_source.load_source(tmp_path / "tfds", "folder_64x48", "train", with_meta=True)
    ours = tfds_source.load_source(tmp_path / "ours", "folder_64x48", "train", with_meta=True)
    assert len(theirs) == len(ours) == 4
    for a, b in zip(theirs, ours):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
