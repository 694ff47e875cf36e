"""Photos in the folder layout (m2e_jax/data_schema.py) -> TFDS array_record records: the listing
(folder.py, densepose_files.py, pairing.py, catalog.py), per-photo checks and the bad-record report
(validate.py), one record per example (assemble.py), a bounded process pool (pool.py) and the TFDS
builder with `build` (builder.py).

The trainer builds the demo's synthetic records with it (m2e_jax.synthetic.records); data_prep adds
the DeepFashion / MVC readers and the `python -m data_prep.build` / `tfds build` command lines on top,
so users' photos and the demo's world go through the same code.
"""
