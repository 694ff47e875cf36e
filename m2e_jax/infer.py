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

The try-on itself is m2e_jax.tryon_pipeline's (the web page and benchmarks.fullres run the same
code): photos of any size are letterboxed to the network's size for the networks; the try-on is
then made at the person photo's own resolution (`--resolution full`, the default) or pasted back
from the network's size (`--resolution network`). Either way the person's own bytes are kept
outside the garment region. Parsing maps are optional: without one for both photos the replace
region is the DensePose garment region R_P, and a checkpoint that never trained without parsing
says so in one line. A try-on that leaves the garment region as it was says why.

This module is the command: arguments, the job list (one pair or a `--pairs` CSV), writing the
outputs (local folders or gs:// alike), one-line errors. One compilation per batch size; the last
batch is padded, so a photo gets the same result alone or in a batch. Errors in the inputs are one
line on stderr and exit code 1; every input is checked before anything is written, and outputs are
written to temporary names and renamed at the end, so nothing is half-written.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import logging
import os
import sys
from collections.abc import Sequence

import numpy as np
from etils import epath
from PIL import Image

from m2e_jax import checkpointing, densepose, storage_clients, workdir, xla_flags
from m2e_jax import tryon_pipeline as pipeline
from m2e_jax.readers.photos import ImageRef

# --save_stages: the file suffix of each network-size stage (tryon_pipeline.STAGES).
STAGE_FILES = {"warped": "warp", "aligned": "pan", "refined": "trn", "output": "ftn"}


class InferError(Exception):
    """A problem with the command's arguments or pairs file; the message is one line naming it."""


@dataclasses.dataclass
class Job:
    """One try-on to run: the two photos' files and the output path."""

    model: ImageRef
    person: ImageRef
    output: str


# ---------------------------------------------------------------- writing

def _tmp_name(path: epath.Path) -> epath.Path:
    root, ext = os.path.splitext(path.name)
    return path.parent / f".{root}.tmp-{os.getpid()}{ext}"


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _write_atomic(files: dict[str, np.ndarray]) -> None:
    """Writes every uint8 image to a temporary name first, then renames all into place (local
    folders through etils.epath; in a bucket, gs://, each object whole as it is uploaded)."""
    if files and not workdir.is_local(next(iter(files))):
        _write_objects(files)
        return
    tmps: dict[epath.Path, epath.Path] = {}
    try:
        for name, image in files.items():
            path = epath.Path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmps[path] = _tmp_name(path)
            tmps[path].write_bytes(_png(image))
    except (OSError, ValueError) as e:
        for t in tmps.values():
            if t.exists():
                t.unlink()
        raise InferError(f"{name}: cannot write ({e})") from None
    for path, tmp in tmps.items():
        tmp.replace(path)


def _write_objects(files: dict[str, np.ndarray]) -> None:
    """Bucket outputs: every image encoded first, then each object uploaded whole (workdir.write_atomic)."""
    encoded = {path: _png(image) for path, image in files.items()}
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


def output_files(result: pipeline.Result, output: str, save_stages: bool) -> dict[str, np.ndarray]:
    """{path: uint8 image}: the try-on at the person photo's size and, if asked, the network-size
    stages and their side-by-side sheet."""
    files = {output: result.image}
    if save_stages:
        names = stage_files(output)
        files.update({names[key]: result.stages[key] for key in STAGE_FILES})
        files[names["stages"]] = result.sheet()
    return files


def run_jobs(net: pipeline.TryOn, jobs: Sequence[Job], garment_kind: int, batch_size: int = 8,
             select: str = "largest", save_stages: bool = False, progress: bool = False,
             resolution: str = "full") -> None:
    """Checks every job's inputs first (one bad file stops the run before anything is written), then
    tries them on in batches of `batch_size` (TryOn.tryon at `resolution`) and writes each result
    atomically; its notes (missing parsing maps, an unchanged result) go to stderr, one line each."""
    for job in jobs:  # validation pass: decode, check, discard
        pipeline.read_photo(job.model, select), pipeline.read_photo(job.person, select)
    from tqdm import tqdm

    batches = range(0, len(jobs), batch_size)
    for start in tqdm(batches, desc="try-on", unit="batch", disable=not progress):
        chunk = jobs[start: start + batch_size]
        pairs = [pipeline.Pair(pipeline.read_photo(j.model, select), pipeline.read_photo(j.person, select),
                               j.model.image, j.person.image, j.output) for j in chunk]
        for job, result in zip(chunk, net.tryon(pairs, garment_kind, resolution, batch_size)):
            for note in result.notes:
                warn(note)
            _write_atomic(output_files(result, job.output, save_stages))


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
        jobs.append(Job(pipeline.photo_ref(m, role="model"), pipeline.photo_ref(p, role="person"), out))
    if not jobs:
        raise InferError(f"--pairs {path}: no pairs listed")
    return jobs


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


# ---------------------------------------------------------------- command line

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
    pipeline.add_arguments(p)
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
    return [Job(pipeline.photo_ref(args.model_image, args.model_iuv, args.model_parse, "model"),
                pipeline.photo_ref(args.person_image, args.person_iuv, args.person_parse, "person"),
                args.output)]


def warn(message: str) -> None:
    """One warning line on stderr (a damaged checkpoint skipped, ...)."""
    print(f"m2e_jax.infer: warning: {' '.join(message.split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    storage_clients.install()  # before any path is built
    xla_flags.configure(args.cpu_convolutions)  # before the first JAX computation
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's info/warnings are not for users
    try:
        if args.batch_size < 1:
            raise InferError(f"--batch_size must be >= 1, got {args.batch_size}")
        jobs = _jobs_from_args(args)
        located = checkpointing.find_step(args.workdir, args.checkpoint, args.step)
        net = pipeline.restore(located, args.config, not args.no_fallback, warn)
        kind = densepose.GARMENT_KINDS.index(args.garment_kind) if args.garment_kind else net.garment_kind
        batch_size = 1 if len(jobs) == 1 else args.batch_size
        run_jobs(net, jobs, kind, batch_size, args.select, args.save_stages,
                 progress=len(jobs) > 1, resolution=args.resolution)
    except (InferError, *pipeline.USER_ERRORS) as e:
        print(f"m2e_jax.infer: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
