"""Try-on for users: a trained checkpoint + a model photo + a person photo -> the person in the garment.

    python -m m2e_jax.infer --workdir runs/synthetic --model_image m.jpg --person_image p.jpg \
        --output out.png [--model_iuv m_IUV.png|dump.pkl] [--person_iuv ...] [--save_stages]
    python -m m2e_jax.infer --workdir runs/synthetic --pairs pairs.csv --output_dir out/

DensePose for each photo: `NAME_IUV.png` beside it (Detectron, OpenCV channel order; `NAME_INDS.png`
picks one person) unless `--*_iuv` names a PNG or a detectron2 `apply_net.py dump` file. An optional
`NAME_parse.png` (0 other, 1 upper, 2 lower garment) beside a photo is used as its garment mask, as
in training. The config saved with the checkpoint rebuilds the networks; only the generator
parameters (the EMA copy when training kept one) are read from it (m2e_jax.checkpointing: the newest
complete checkpoint that verifies; a damaged newer one is named on stderr, `--no_fallback` refuses).

Photos of any size are letterboxed to the network's size (preprocess.fit) for the networks; the
try-on is then made at the person photo's own resolution (`--resolution full`, the default:
models.tryon.full_resolution_tryon redoes the UV warp, the regions and TRN's / FTN's output formulas
at the photo's size with the networks' maps upsampled, so the garment keeps the photo's detail) or
pasted back from the network's size (`--resolution network`, preprocess.paste_back). Either way the
person's own bytes are kept outside the garment region.

Parsing maps are optional. Without them (DensePose alone: either photo lacks one, so both are
dropped) the replace region is the DensePose garment region R_P (models.tryon.replace_region); a
checkpoint trained with model.parse_region but never without parsing (model.parse_dropout = 0)
says so in one line. A try-on that leaves the garment region as it was says why.

One compilation per batch size; the last batch is padded, so a photo
gets the same result alone or in a batch. Errors in the inputs are one line on stderr and exit code
1; outputs are written to temporary names and renamed at the end, so nothing is half-written.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import importlib.util
import io
import logging
import os
import sys
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image

from m2e_jax import checkpointing, data_schema, densepose, preprocess, workdir, xla_flags
from m2e_jax.models import tryon as tryon_lib
from m2e_jax.readers import detectron2_dump, images, iuv_png
from m2e_jax.readers.photos import DumpIndex, ImageRef, IuvRef, Photo, RecordError, check_person, load_photo

STAGE_FILES = {"warped": "warp", "aligned": "pan", "refined": "trn", "output": "ftn"}


class InferError(Exception):
    """A problem with the user's inputs or checkpoint; the message is one line naming the file."""


# ---------------------------------------------------------------- config

def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`configs/NAME.py[:ARG]` -> its get_config(ARG) (as `--config` of the training command)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise InferError(f"--config {path}: file not found")
    module_spec = importlib.util.spec_from_file_location("_m2e_infer_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        return module.get_config(arg or None)
    except Exception as e:  # a user file: report, do not trace back
        raise InferError(f"--config {spec}: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------- photos

def photo_ref(image: str, iuv: str | None = None, parse: str | None = None, role: str = "photo") -> ImageRef:
    """An ImageRef for readers.photos.load_photo: DensePose from `iuv` (an `_IUV.png` or a dump file) or
    `NAME_IUV.png` beside the photo; parsing from `parse` or `NAME_parse.png` beside it if present."""
    stem = os.path.splitext(image)[0]
    if iuv is None:
        iuv = stem + "_IUV.png"
        if not os.path.isfile(iuv):
            raise InferError(f"{image}: no DensePose output beside the {role} photo ({iuv}); "
                             f"pass --{role}_iuv")
    if not os.path.isfile(iuv):
        raise InferError(f"--{role}_iuv {iuv}: file not found")
    if iuv.lower().endswith(".png"):
        ref = IuvRef(png=iuv, inds=iuv_png.inds_path_for(iuv))
    else:
        try:
            index = DumpIndex(iuv)
        except detectron2_dump.DumpError as e:
            raise InferError(str(e)) from None
        ref = index.ref(image)
        if ref is None or ref.problem:
            raise InferError(f"{iuv}: {ref.problem if ref else 'no entry'} for {os.path.basename(image)}")
    if parse is None and os.path.isfile(stem + "_parse.png"):
        parse = stem + "_parse.png"
    return ImageRef(name=os.path.basename(stem), image=image, item="", iuv=ref, parse=parse)


def read_photo(ref: ImageRef, select: str = "largest", max_pixels: int = images.MAX_PIXELS) -> Photo:
    """Decodes and checks a photo, its DensePose (same size, a person present) and parsing map; an
    image over `max_pixels` is refused from its header."""
    try:
        photo = load_photo(ref, select, max_pixels=max_pixels)
        check_person(photo.iuv, ref.iuv.describe())
    except RecordError as e:
        raise InferError(str(e)) from None
    return photo


def _mask(parse: np.ndarray | None, kind: int, shape: tuple[int, int]) -> np.ndarray:
    return preprocess.parse_mask(parse, kind, shape)


def make_example(model: preprocess.Fitted, person: preprocess.Fitted, garment_kind: int) -> dict:
    """A data_schema example (no target) from two photos at network size."""
    ex = data_schema.empty_example(*person.image.shape[:2])
    ex.update(model_image=model.image, model_iuv=model.iuv, person_image=person.image, person_iuv=person.iuv,
              model_mask=_mask(model.parse, garment_kind, model.image.shape[:2]),
              person_mask=_mask(person.parse, garment_kind, person.image.shape[:2]),
              garment_kind=np.int32(garment_kind))
    return ex


@dataclasses.dataclass
class Job:
    """One try-on to run: the two photos, where to write, and the person's full-resolution photo."""

    model: ImageRef
    person: ImageRef
    output: str


# ---------------------------------------------------------------- the network

class TryOn:
    """Restored generators + one jitted forward per batch size. `run(examples) -> outputs`."""

    def __init__(self, config: ml_collections.ConfigDict, params: dict):
        self.config = config
        self.model_cfg = ml_collections.FrozenConfigDict(config.model)
        self.height, self.width = int(config.model.height), int(config.model.width)
        self.params = jax.device_put(params)
        # models.tryon.forward, compiled once per batch size for this TryOn's life.
        self._forward = jax.jit(functools.partial(tryon_lib.forward, model_cfg=self.model_cfg))
        # One compilation per (photo size, scaled config); scaled_model_config is static.
        self._full = jax.jit(tryon_lib.full_resolution_tryon, static_argnames="model_cfg")

    @property
    def needs_parsing(self) -> bool:
        """Trained with model.parse_region on parsing masks only (model.parse_dropout = 0): photos
        without parsing maps get the DensePose-only region R_P, which it never saw in training."""
        m = self.model_cfg
        return bool(m.get("parse_region", False)) and float(m.get("parse_dropout", 0.0)) == 0.0

    @property
    def uses_model_parsing_alone(self) -> bool:
        """Trained with model.ftn_paint and model.person_parse_dropout > 0: a model photo's parsing map
        is used without the person's (models.tryon.paint_region), a case it saw in training."""
        m = self.model_cfg
        return bool(m.get("ftn_paint", False)) and float(m.get("person_parse_dropout", 0.0)) > 0.0

    def full_resolution(self, model: Photo, person: Photo, out: dict[str, np.ndarray],
                        box, garment_kind: int) -> dict[str, np.ndarray]:
        """The try-on at the person photo's size (models.tryon.full_resolution_tryon) from one
        example's network outputs `out` (`run`) and the person's Letterbox `box`; float numpy
        `[h, w, C]`: output, soft_region, warped, refined, ..."""
        maps = preprocess.upsample_maps(out, box, tryon_lib.RESOLUTION_FREE)
        mask = lambda photo: preprocess.parse_mask(photo.parse, garment_kind, photo.image.shape[:2])
        batch = preprocess.full_resolution_example(model.image, model.iuv, mask(model), person.image,
                                                   person.iuv, mask(person), garment_kind)
        cfg = tryon_lib.scaled_model_config(self.model_cfg, preprocess.photo_scale(box))
        res = jax.device_get(self._full({k: v[None] for k, v in maps.items()}, batch, model_cfg=cfg))
        return {k: np.asarray(v[0]) for k, v in res.items()}

    def run(self, examples: Sequence[dict], batch_size: int | None = None) -> list[dict[str, np.ndarray]]:
        """Network outputs (warped, aligned, refined, output, soft_region; float numpy, network size)
        per example; batches of `batch_size` (default: all), the last padded with empty examples."""
        n = len(examples)
        bs = batch_size or n
        keys = ("warped", "aligned", "refined", "output", "soft_region", "region") + tryon_lib.RESOLUTION_FREE
        results: list[dict[str, np.ndarray]] = []
        for start in range(0, n, bs):
            chunk = list(examples[start: start + bs])
            chunk += [data_schema.empty_example(self.height, self.width)] * (bs - len(chunk))
            batch = {k: np.stack([np.asarray(ex[k]) for ex in chunk]) for k in data_schema.KEYS}
            out = jax.device_get(self._forward(self.params, batch))
            results += [{k: np.asarray(out[k][i]) for k in keys if k in out}
                        for i in range(min(bs, n - start))]
        return results


def _tmp_name(path: str) -> str:
    d, base = os.path.split(os.path.abspath(path))
    root, ext = os.path.splitext(base)
    return os.path.join(d, f".{root}.tmp-{os.getpid()}{ext}")


def _write_atomic(files: dict[str, np.ndarray]) -> None:
    """Writes every uint8 image to a temporary name first, then renames all into place (in a bucket,
    gs://: each object whole as it is uploaded)."""
    if files and not workdir.is_local(next(iter(files))):
        _write_objects(files)
        return
    tmps = {}
    try:
        for path, image in files.items():
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmps[path] = _tmp_name(path)
            Image.fromarray(image).save(tmps[path])
    except (OSError, ValueError) as e:
        for t in tmps.values():
            if os.path.exists(t):
                os.remove(t)
        raise InferError(f"{path}: cannot write ({e})") from None
    for path, tmp in tmps.items():
        os.replace(tmp, path)


def _write_objects(files: dict[str, np.ndarray]) -> None:
    encoded = {}
    for path, image in files.items():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=Image.registered_extensions().get(
            os.path.splitext(path)[1].lower(), "PNG"))
        encoded[path] = buffer.getvalue()
    for path, data in encoded.items():
        try:
            workdir.write_atomic(path, data)
        except OSError as e:
            raise InferError(f"{path}: cannot write ({e})") from None


def stage_files(output: str) -> dict[str, str]:
    """--save_stages file names beside `output`: out_warp.png, out_pan.png, ..., out_stages.png."""
    root, ext = os.path.splitext(output)
    names = {key: f"{root}_{name}{ext}" for key, name in STAGE_FILES.items()}
    names["stages"] = f"{root}_stages{ext}"
    return names


RESOLUTIONS = ("full", "network")


def tryon_image(net: TryOn, job_photos: tuple[Photo, Photo],
                fitted: tuple[preprocess.Fitted, ...], out: dict[str, np.ndarray], garment_kind: int,
                resolution: str = "full") -> tuple[np.ndarray, np.ndarray]:
    """(try-on uint8 `[h, w, 3]`, its soft region R~ float `[h, w, 1]`) at the person photo's size.

    resolution "full": made at the photo's resolution (TryOn.full_resolution); "network": the
    network-size try-on pasted back (preprocess.paste_back). P's own bytes wherever R~ is 0.
    """
    model, person = job_photos
    if resolution not in RESOLUTIONS:
        raise InferError(f"--resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    p_fit = fitted[1]
    if resolution == "network":
        image = preprocess.paste_back(person.image, out["output"], preprocess.to_float(p_fit.image),
                                      out["soft_region"], p_fit.box)
        return image, preprocess.unfit(out["soft_region"], p_fit.box)
    full = net.full_resolution(model, person, out, p_fit.box, garment_kind)
    return preprocess.keep_person(person.image, full["output"], full["soft_region"]), full["soft_region"]


def unchanged_reason(person: np.ndarray, image: np.ndarray, soft_region: np.ndarray, person_name: str,
                     garment_kind: int) -> str | None:
    """One line saying why the try-on `image` equals the `person` photo in the garment region, else None."""
    inside = np.asarray(soft_region)[..., 0] > 0
    kind = densepose.GARMENT_KINDS[garment_kind]
    if not inside.any():
        return (f"{person_name}: DensePose finds none of the {kind} garment's body parts on the person, "
                f"so there is nothing to replace: the output is the person photo unchanged")
    if np.array_equal(image[inside], person[inside]):
        return (f"{person_name}: the try-on equals the person photo inside the {kind} garment region "
                f"({int(inside.sum())} pixels): the networks kept the person's own pixels there")
    return None


def drop_unpaired_parsing(photos: tuple[Photo, Photo], job: Job, needs_parsing: bool,
                          model_alone: bool = False) -> tuple[tuple[Photo, Photo], list[str]]:
    """The two photos with parsing maps kept only when both have one (an example has parsing for
    both photos or for neither, as in training), and the one-line notes to print. With
    `model_alone` (TryOn.uses_model_parsing_alone) the model photo's map is also kept without the
    person's: the checkpoint trained on that case."""
    model, person = photos
    if model_alone and model.parse is not None and person.parse is None:
        return (model, person), []
    missing = [ref.image for p, ref in ((model, job.model), (person, job.person)) if p.parse is None]
    notes = []
    if missing and len(missing) < 2:
        notes.append(f"{missing[0]}: no parsing map (NAME_parse.png or --*_parse) while the other photo "
                     f"has one; both are ignored and the DensePose garment region is replaced")
    if missing and needs_parsing:
        notes.append(f"{job.output}: this checkpoint needs parsing maps (trained with "
                     f"model.parse_region=True and model.parse_dropout=0) and {missing[0]} has none: "
                     f"it replaces the whole DensePose garment region instead, which it never trained "
                     f"on; give NAME_parse.png for both photos or use a checkpoint trained with "
                     f"model.parse_dropout > 0")
    if missing:
        model = dataclasses.replace(model, parse=None)
        person = dataclasses.replace(person, parse=None)
    return (model, person), notes


def result_images(job_photos: tuple[Photo, Photo], fitted: tuple[preprocess.Fitted, ...],
                  out: dict[str, np.ndarray], output: str, save_stages: bool,
                  image: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """{path: uint8 image}: the try-on at the person photo's size (`image`, else the network-size
    try-on pasted back) and, if asked, the network-size stages."""
    _, person = job_photos
    m_fit, p_fit = fitted
    if image is None:
        image = preprocess.paste_back(person.image, out["output"], preprocess.to_float(p_fit.image),
                                      out["soft_region"], p_fit.box)
    files = {output: image}
    if save_stages:
        names = stage_files(output)
        stages = {key: preprocess.to_uint8(out[key]) for key in STAGE_FILES}
        files.update({names[key]: img for key, img in stages.items()})
        files[names["stages"]] = np.concatenate([m_fit.image, p_fit.image] + list(stages.values()), axis=1)
    return files


def run_jobs(net: TryOn, jobs: Sequence[Job], garment_kind: int, batch_size: int = 8, select: str = "largest",
             save_stages: bool = False, progress: bool = False, resolution: str = "full") -> None:
    """Checks every job's inputs first (one bad file stops the run before anything is written), then
    runs them in batches of `batch_size` and writes each result atomically (`tryon_image` at
    `resolution`); notes on missing parsing maps and unchanged results go to stderr, one line each."""
    for job in jobs:  # validation pass: decode, check, discard
        read_photo(job.model, select), read_photo(job.person, select)
    from tqdm import tqdm

    batches = range(0, len(jobs), batch_size)
    for start in tqdm(batches, desc="try-on", unit="batch", disable=not progress):
        chunk = jobs[start: start + batch_size]
        photos = []
        for j in chunk:
            pair, notes = drop_unpaired_parsing((read_photo(j.model, select), read_photo(j.person, select)),
                                                j, net.needs_parsing, net.uses_model_parsing_alone)
            photos.append(pair)
            for note in notes:
                warn(note)
        fitted = [tuple(preprocess.fit(p.image, p.iuv, net.height, net.width, p.parse, where=ref.image)
                        for p, ref in zip(pair, (j.model, j.person))) for pair, j in zip(photos, chunk)]
        outs = net.run([make_example(m, p, garment_kind) for m, p in fitted], batch_size)
        for job, pair, fit, out in zip(chunk, photos, fitted, outs):
            image, soft = tryon_image(net, pair, fit, out, garment_kind, resolution)
            reason = unchanged_reason(pair[1].image, image, soft, job.person.image, garment_kind)
            if reason:
                warn(reason)
            _write_atomic(result_images(pair, fit, out, job.output, save_stages, image))


# ---------------------------------------------------------------- pairs files

def _resolve(name: str, bases: Sequence[str], where: str) -> str:
    for base in bases:
        for cand in (name, name + ".png", name + ".jpg", name + ".jpeg"):
            for folder in (base, os.path.join(base, "images")):
                path = os.path.join(folder, cand)
                if os.path.isfile(path):
                    return path
    raise InferError(f"{where}: photo {name!r} not found under {', '.join(bases)}")


def read_pairs(path: str, output_dir: str, image_dir: str | None = None) -> list[Job]:
    """Jobs from a CSV with header `model,person` (or `source,target`, as pairs.csv); names or paths
    relative to `image_dir` (default: the CSV's folder, also its images/ subfolder)."""
    if not os.path.isfile(path):
        raise InferError(f"--pairs {path}: file not found")
    try:  # utf-8-sig: spreadsheets save CSVs with a byte-order mark
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise InferError(f"--pairs {path}: not a UTF-8 text CSV ({e.reason} at byte {e.start})") from None
    if not rows:
        raise InferError(f"--pairs {path}: empty file")
    header = [h.strip().lower() for h in rows[0]]
    cols = next(((header.index(a), header.index(b)) for a, b in (("model", "person"), ("source", "target"))
                 if a in header and b in header), None)
    if cols is None:
        raise InferError(f"--pairs {path}: header must name columns model,person (or source,target), "
                         f"got {rows[0]}")
    bases = [image_dir] if image_dir else [os.path.dirname(os.path.abspath(path))]
    jobs = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(cols):
            raise InferError(f"{path}:{line}: expected {len(header)} columns, got {len(row)}")
        m, p = (_resolve(row[c].strip(), bases, f"{path}:{line}") for c in cols)
        out = os.path.join(output_dir, f"{_stem(m)}__{_stem(p)}.png")
        jobs.append(Job(photo_ref(m, role="model"), photo_ref(p, role="person"), out))
    if not jobs:
        raise InferError(f"--pairs {path}: no pairs listed")
    return jobs


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


# ---------------------------------------------------------------- command line

def add_tryon_arguments(p: argparse.ArgumentParser) -> None:
    """--select and --resolution: how one pair is tried on, for infer and the web page alike."""
    p.add_argument("--select", choices=("largest", "central", "score"), default="largest",
                   help="which person to use when DensePose found several")
    p.add_argument("--resolution", choices=RESOLUTIONS, default="full",
                   help="full: the try-on made at the person photo's resolution (default); network: "
                        "made at the network's size and pasted back")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m m2e_jax.infer", description=__doc__.split("\n\n")[0])
    checkpointing.add_arguments(p)
    p.add_argument("--config", default=None,
                   help="configs/NAME.py[:ARG] instead of the config saved with the checkpoint")
    p.add_argument("--model_image", help="photo of the model wearing the garment")
    p.add_argument("--person_image", help="photo of the person to dress")
    p.add_argument("--model_iuv", help="model's DensePose: NAME_IUV.png or a detectron2 dump")
    p.add_argument("--person_iuv", help="person's DensePose: NAME_IUV.png or a detectron2 dump")
    p.add_argument("--model_parse", help="optional parsing PNG (0 other, 1 upper, 2 lower)")
    p.add_argument("--person_parse", help="optional parsing PNG (0 other, 1 upper, 2 lower)")
    p.add_argument("--output", help="output PNG (single pair)")
    p.add_argument("--pairs", help="CSV of pairs (header model,person or source,target)")
    p.add_argument("--image_dir", help="folder the names in --pairs are relative to")
    p.add_argument("--output_dir", help="output folder (with --pairs)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--garment_kind", choices=densepose.GARMENT_KINDS, default=None,
                   help="garment to transfer (default: the config's model.garment_kind)")
    add_tryon_arguments(p)
    p.add_argument("--save_stages", action="store_true",
                   help="also write the warp, PAN, TRN, FTN outputs and a side-by-side PNG")
    xla_flags.add_argument(p)
    return p


def _jobs_from_args(args) -> list[Job]:
    if args.pairs:
        if args.output_dir is None:
            raise InferError("--pairs needs --output_dir")
        return read_pairs(args.pairs, args.output_dir, args.image_dir)
    missing = [f"--{k}" for k in ("model_image", "person_image", "output") if getattr(args, k) is None]
    if missing:
        raise InferError(f"missing {', '.join(missing)} (or give --pairs and --output_dir)")
    for flag in ("model_image", "person_image"):
        if not os.path.isfile(getattr(args, flag)):
            raise InferError(f"--{flag} {getattr(args, flag)}: file not found")
    return [Job(photo_ref(args.model_image, args.model_iuv, args.model_parse, "model"),
                photo_ref(args.person_image, args.person_iuv, args.person_parse, "person"), args.output)]


def warn(message: str) -> None:
    """One warning line on stderr (a damaged checkpoint skipped, ...)."""
    print(f"m2e_jax.infer: warning: {' '.join(message.split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    xla_flags.configure(args.cpu_convolutions)  # before the first JAX computation
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's info/warnings are not for users
    try:
        if args.batch_size < 1:
            raise InferError(f"--batch_size must be >= 1, got {args.batch_size}")
        jobs = _jobs_from_args(args)
        located = checkpointing.find_step(args.workdir, args.checkpoint, args.step)
        override = load_config_file(args.config) if args.config else None
        config, params, _ = checkpointing.load_generators(located, override, not args.no_fallback, warn)
        kind = densepose.GARMENT_KINDS.index(args.garment_kind or config.model.garment_kind)
        batch_size = 1 if len(jobs) == 1 else args.batch_size
        run_jobs(TryOn(config, params), jobs, kind, batch_size, args.select, args.save_stages,
                 progress=len(jobs) > 1, resolution=args.resolution)
    except (InferError, checkpointing.CheckpointError, images.ReadError, detectron2_dump.DumpError) as e:
        print(f"m2e_jax.infer: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
