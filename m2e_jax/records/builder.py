"""The M2E try-on TFDS dataset: photos + DensePose outputs -> array_record files of data_schema records.

Configs are `<source>_<H>x<W>` (source: synthetic, deepfashion, mvc, folder); any size works through
`M2EConfig`. This builder reads the folder layout (m2e_jax/data_schema.py; "synthetic" is that layout
as m2e_jax.synthetic writes it), so the trainer builds the demo's records with it; data_prep's
subclass (data_prep/m2e_dataset) adds the DeepFashion and MVC readers, and `build` runs either one.
Input is read from `manual_dir`; every photo is validated first (validate.py), bad records are
skipped and listed in `build_report.json` / `.txt` inside the version folder (or, with `strict`, the
build stops at the first). TFDS writes into a temporary folder and renames it at the end,
so an interrupted build never looks complete.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from m2e_jax import data_schema, tfds_source, workdir
from m2e_jax.readers import images, photos
from m2e_jax.records import assemble, folder, validate
from m2e_jax.records.catalog import Problem, SplitCatalog
from m2e_jax.records.pool import parallel_map

SOURCES = ("synthetic", "deepfashion", "mvc", "folder")
DEFAULT_SIZES = ((256, 192), (128, 96), (64, 48))


class M2EConfig(tfds.core.BuilderConfig):
    """`source` layout read from manual_dir, records of `height` x `width`."""

    def __init__(self, *, source: str, height: int, width: int, **kwargs):
        if source not in SOURCES:
            raise ValueError(f"source: unknown {source!r}; expected one of {SOURCES}")
        if height < 8 or width < 8:
            raise ValueError(f"height, width must be >= 8, got {height}x{width}")
        kwargs.setdefault("name", f"{source}_{height}x{width}")
        kwargs.setdefault("description", f"{source} try-on examples letterboxed to {height}x{width}")
        super().__init__(**kwargs)
        self.source, self.height, self.width = source, int(height), int(width)


def config_from_name(name: str) -> M2EConfig:
    """'folder_128x96' -> M2EConfig(source='folder', height=128, width=96)."""
    source, _, size = name.rpartition("_")
    try:
        h, w = (int(v) for v in size.split("x"))
    except ValueError:
        raise ValueError(f"config name {name!r} is not <source>_<H>x<W>") from None
    return M2EConfig(source=source, height=h, width=w)


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """Choices that shape the records but not the config name (recorded in the report)."""

    strict: bool = False
    num_unpaired: int | None = None  # per split; None: as many as paired examples (0 for synthetic)
    seed: int = 0
    select: str | int = "largest"    # person choice: largest / central / score / INDS value or dump index
    garment_kind: str | None = None  # None: from the dataset (category, meta.json) else upper
    test_fraction: float = 0.1
    max_pairs_per_item: int | None = None
    min_person_fraction: float = photos.MIN_PERSON_FRACTION
    max_pixels: int = images.MAX_PIXELS  # larger images are refused before decoding
    workers: int = 0                 # processes for decode/validate/resize; 0: in this process


CatalogReader = Callable[[Path, "BuildOptions"], dict[str, SplitCatalog]]


def read_folder_catalog(root: Path, opts: BuildOptions) -> dict[str, SplitCatalog]:
    """The folder layout (folder.py): as many unpaired draws as pairs unless `opts.num_unpaired`."""
    kw = dict(garment_kind=opts.garment_kind, seed=opts.seed, test_fraction=opts.test_fraction)
    num_unpaired = opts.num_unpaired
    if num_unpaired is None:
        num_unpaired = paired_count(folder.read_folder(root, **kw))
    return folder.read_folder(root, num_unpaired=num_unpaired, **kw)


def read_synthetic_catalog(root: Path, opts: BuildOptions) -> dict[str, SplitCatalog]:
    """The synthetic world's folder: its triplets carry ground truth, so no unpaired draws by default."""
    kw = dict(garment_kind=opts.garment_kind, seed=opts.seed, test_fraction=opts.test_fraction)
    return folder.read_folder(root, num_unpaired=opts.num_unpaired or 0, **kw)


def paired_count(cats: dict[str, SplitCatalog]) -> int:
    """The most paired examples any split has (the default number of unpaired draws per split)."""
    return max((sum(e.paired for e in c.examples) for c in cats.values()), default=0)


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """M2E-TON try-on examples (data_schema fields, ids and letterbox transforms).

    READERS maps a config's source to the function listing its layout; this class reads the folder
    layout only. Not registered with TFDS: data_prep's subclass is the registered `m2e_dataset`
    (`tfds build data_prep/m2e_dataset`), and both write DATA_DIR/m2e_dataset/<config>/<version>.
    """

    name = tfds_source.NAME
    READERS: dict[str, CatalogReader] = {"folder": read_folder_catalog, "synthetic": read_synthetic_catalog}
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [M2EConfig(source=s, height=h, width=w) for s in SOURCES for h, w in DEFAULT_SIZES]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Point manual_dir at the photos and DensePose outputs in the layout of the source (README,
    "Your own photos -> dataset": which files of each release, what is read from each): `folder` and
    `synthetic` (m2e_jax/records/folder.py), `deepfashion` (data_prep/readers/deepfashion.py: the
    In-shop release root or Pose-Transfer's fashion_data/), `mvc` (data_prep/readers/mvc.py). For
    `synthetic`, `python -m data_prep.build` writes the world first.
    """

    def __init__(self, *, options: BuildOptions | None = None, **kwargs):
        self.options = options or BuildOptions()
        # array_record, the random-access format the trainer reads, also under `tfds build` (whose
        # own default is TFRecord) unless --file_format says otherwise
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        h, w = self.builder_config.height, self.builder_config.width
        image = lambda c: tfds.features.Image(shape=(h, w, c), encoding_format="png")
        spec = data_schema.spec(h, w)
        features = {k: image(shape[-1]) for k, (shape, _) in spec.items() if len(shape) == 3}
        features |= {k: tfds.features.Scalar(dtype=np.int32) for k in data_schema.SCALAR_KEYS}
        features |= {k: tfds.features.Text() for k in ("key", "model_id", "person_id", "target_id")}
        features |= {k: tfds.features.Tensor(shape=(3,), dtype=np.float32)
                     for k in ("model_transform", "person_transform")}
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features),
                                              homepage="https://doi.org/10.1145/3343031.3351083")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg, opts = self.builder_config, self.options
        root = Path(dl_manager.manual_dir)
        if cfg.source not in self.READERS:
            raise ValueError(f"{cfg.source} datasets are read by data_prep: build them with "
                             f"`python -m data_prep.build --dataset {cfg.source}`")
        cats = self.READERS[cfg.source](root, opts)
        problems: list[Problem] = []
        self._notes.extend(n for cat in cats.values() for n in cat.notes)
        for split, cat in cats.items():
            for p in cat.problems:
                problems.append(Problem(p.file, p.reason, split))
                if opts.strict:
                    raise photos.RecordError(p.file, p.reason)
        bad = self._validate_photos(cats, problems)
        self._problems.extend(problems)
        gens = {}
        for split, cat in cats.items():
            examples = [e for e in cat.examples if not ({e.model, e.person, e.target} - {None}) & bad[split]]
            if examples:
                gens[split] = self._generate_examples(split, cat, examples)
        if not gens:
            raise ValueError(f"{root}: no usable examples ({len(problems)} problem(s); first: "
                             f"{problems[0].line() if problems else 'no pairs, triplets or unpaired draws'})")
        return gens

    def _validate_photos(self, cats: dict[str, SplitCatalog], problems: list[Problem]) -> dict[str, set[str]]:
        jobs, owners = [], []
        for split, cat in cats.items():
            targets_only = ({e.target for e in cat.examples if e.target}
                            - {n for e in cat.examples for n in (e.model, e.person)})
            used = sorted({n for e in cat.examples for n in (e.model, e.person, e.target) if n})
            for name in used:
                jobs.append((cat.images[name], name not in targets_only))
                owners.append((split, name))
        bad: dict[str, set[str]] = {s: set() for s in cats}
        opts = self.options
        fn = validate.PhotoCheck(opts.select, opts.min_person_fraction, opts.max_pixels)
        for (split, name), result in zip(owners, parallel_map(fn, jobs, self.options.workers)):
            if isinstance(result, photos.RecordError):
                if self.options.strict:
                    raise result
                problems.append(Problem(result.file, result.reason, split))
                bad[split].add(name)
        return bad

    def _generate_examples(self, split: str, cat: SplitCatalog, examples):
        cfg = self.builder_config
        jobs = [(e, {n: cat.images[n] for n in (e.model, e.person, e.target) if n}) for e in examples]
        fn = assemble.RecordMaker(cfg.height, cfg.width, self.options.select, self.options.max_pixels)
        n = 0
        for ex, rec in parallel_map(fn, jobs, self.options.workers):
            if isinstance(rec, photos.RecordError):
                if self.options.strict:
                    raise rec
                self._problems.append(Problem(rec.file, rec.reason, split))
                continue
            n += 1
            yield ex.key, rec
        self._counts[split] = n

    def _recorded_options(self) -> dict:
        # the worker count changes how, not what, is built: the report of a parallel build equals
        # the serial one's byte for byte
        opts = dataclasses.asdict(self.options)
        opts.pop("workers")
        return opts

    def _download_and_prepare(self, dl_manager, download_config):
        self._problems, self._counts, self._notes = [], {}, []
        super()._download_and_prepare(dl_manager, download_config)
        # self.data_dir is still TFDS's temporary folder here: the report moves with the dataset
        validate.write_report(os.fspath(self.data_dir), self._problems,
                              {"examples": self._counts, "options": self._recorded_options(),
                               "notes": self._notes})


def build(source: str, manual_dir: str | os.PathLike, data_dir: str | os.PathLike, height: int, width: int,
          options: BuildOptions = BuildOptions(), *, overwrite: bool = False,
          builder_cls: type[Builder] = Builder) -> str:
    """Builds (or reuses) config `<source>_<height>x<width>` from `manual_dir`; returns its folder
    DATA_DIR/m2e_dataset/<config>/1.0.0.

    An existing build is reused unless `overwrite`; TFDS writes into `incomplete.*` and renames it at
    the end, so a build that was killed is not found and runs again. `builder_cls` is data_prep's
    subclass for the DeepFashion / MVC layouts. A bucket data_dir (gs://...) is built on this host's
    disk and uploaded (build_for_bucket).
    """
    manual = Path(manual_dir).expanduser()
    if not manual.is_dir():
        raise FileNotFoundError(f"--manual_dir {manual}: not a directory")
    if not any(manual.iterdir()):  # TFDS would fail with a multi-line AssertionError
        raise FileNotFoundError(f"--manual_dir {manual}: empty folder (no photos or DensePose outputs)")
    config = M2EConfig(source=source, height=height, width=width)

    def build_here(local_dir: str) -> str:
        # TFDS refuses a config object named like a predefined one: pass predefined ones by name
        config_arg = config.name if config.name in builder_cls.builder_configs else config
        builder = builder_cls(config=config_arg, data_dir=local_dir, options=options)
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite else \
            tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual), download_mode=mode))
        return tfds_source.dataset_dir(local_dir, config.name)

    if not workdir.is_local(data_dir):
        return build_for_bucket(os.fspath(data_dir), config.name, build_here, overwrite=overwrite)
    return build_here(os.fspath(Path(data_dir).expanduser()))


def build_for_bucket(data_dir: str, config_name: str, build_here: Callable[[str], str], *,
                     overwrite: bool = False) -> str:
    """Builds config `config_name` for bucket folder `data_dir` (gs://BUCKET/tfds); returns the
    dataset's folder in the bucket.

    array_record writes local files only, so `build_here(local data_dir)` builds into
    workdir.stage_path(data_dir), the very folder a trainer on this host stages the bucket's records
    to (it then finds them there and copies nothing), and the dataset folder is uploaded with
    workdir.copy_missing: a rerun after a cut upload copies only what is missing and deletes
    nothing. dataset_info.json goes last, so a bucket folder holding it is complete: such a build
    is reused without building, unless `overwrite`, which replaces the bucket's folder.
    """
    remote = workdir.path(tfds_source.dataset_dir(data_dir, config_name))
    if not overwrite and (remote / "dataset_info.json").exists():
        return os.fspath(remote)
    local = build_here(workdir.stage_path(data_dir))
    if overwrite and remote.exists():
        remote.rmtree()  # as TFDS replaces a local build: no file of the old build stays beside the new
    n = workdir.copy_missing(local, remote, last="dataset_info.json")
    logging.info("uploaded %s to %s (%d files copied)", local, remote, n)
    return os.fspath(remote)
