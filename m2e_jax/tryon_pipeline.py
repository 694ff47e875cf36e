"""Two photos -> a try-on: the library behind `infer`, the web page (`demo`) and `benchmarks.fullres`.

The steps, each public (host numpy in, host numpy out), and `TryOn.tryon` running them in order:

  photo_ref, read_photo   a photo's files (the photo; its DensePose: a Detectron `NAME_IUV.png` or a
                          detectron2 `apply_net.py dump` entry; an optional `NAME_parse.png`, 0 other,
                          1 upper, 2 lower garment) -> a checked readers.photos.Photo
  keep_paired_parsing     parsing maps kept for both photos or for neither, as in training (or M's
                          alone where the checkpoint trained on that), with one-line notes
  TryOn.fit               both photos letterboxed to the network's size (preprocess.fit)
  make_example            -> one data_schema example (no target)
  TryOn.run               the networks (models.tryon.forward, compiled once per batch size; the last
                          batch padded, so a photo gets the same result alone or in a batch)
  TryOn.compose           the try-on at the person photo's size: "full" (models.tryon.full_resolution_tryon
                          redoes the UV warp, the regions and TRN's / FTN's output formulas at the
                          photo's size with the networks' maps upsampled, so the garment keeps the
                          photo's detail) or "network" (the network-size try-on pasted back,
                          preprocess.paste_back); P's own bytes wherever the soft region R~ is 0
  unchanged_reason        why a try-on equals P in the garment region (a try-on that returns P
                          unchanged says why)

`TryOn` holds one checkpoint's generators and the functions compiled for them (`restore` builds it
from a checkpoint through m2e_jax.checkpointing's public API). Problems with the user's files are
`TryOnError` (or one of `USER_ERRORS`), one line naming the file; callers print it and go on or stop.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from m2e_jax import checkpointing, data_schema, densepose, preprocess
from m2e_jax.models import tryon as tryon_lib
from m2e_jax.readers import detectron2_dump, images, iuv_png
from m2e_jax.readers.photos import DumpIndex, ImageRef, IuvRef, Photo, RecordError, check_person, load_photo

RESOLUTIONS = ("full", "network")
# The network-size outputs a Result keeps as uint8 stages: the UV warp W, PAN's aligned garment A,
# TRN's refined garment, FTN's try-on P' (models.tryon.forward's keys).
STAGES = ("warped", "aligned", "refined", "output")
# network outputs TryOn.run returns (float, network size): the stages, the regions, and the
# resolution-free maps the full-resolution composition upsamples.
RUN_KEYS = STAGES + ("soft_region", "region") + tryon_lib.RESOLUTION_FREE


class TryOnError(Exception):
    """A problem with the user's inputs or config file; the message is one line naming the file."""


# Everything that means "the user's file or checkpoint is at fault" (one line to print), as opposed to
# a bug in this code.
USER_ERRORS: tuple[type[Exception], ...] = (TryOnError, checkpointing.CheckpointError, images.ReadError,
                                            detectron2_dump.DumpError, RecordError)


# ---------------------------------------------------------------- config and checkpoint

def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`configs/NAME.py[:ARG]` -> its get_config(ARG) (as `--config` of the training command)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise TryOnError(f"--config {path}: file not found")
    module_spec = importlib.util.spec_from_file_location("_m2e_tryon_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        return module.get_config(arg or None)
    except Exception as e:  # a user file: report, do not trace back
        raise TryOnError(f"--config {spec}: {type(e).__name__}: {e}") from None


def restore(located: checkpointing.Located, config_file: str | None = None, fallback: bool = True,
            warn: Callable[[str], None] | None = None) -> TryOn:
    """The TryOn of a located checkpoint (checkpointing.find_step): its generators (the EMA copy when
    training kept one) and the config saved beside them, or `config_file` (load_config_file) instead.
    `fallback`: a damaged newest checkpoint gives way to the newest that verifies, named to `warn`."""
    override = load_config_file(config_file) if config_file else None
    config, params, step_dir = checkpointing.load_generators(located, override, fallback, warn)
    return TryOn(config, params, step_dir)


# ---------------------------------------------------------------- photos

def photo_ref(image: str, iuv: str | None = None, parse: str | None = None, role: str = "photo") -> ImageRef:
    """An ImageRef for read_photo: DensePose from `iuv` (an `_IUV.png` or a dump file) or `NAME_IUV.png`
    beside the photo; parsing from `parse` or `NAME_parse.png` beside it if present. `role` ("model"
    or "person") names the flag (`--person_iuv`) a message points to."""
    stem = os.path.splitext(image)[0]
    if iuv is None:
        iuv = stem + "_IUV.png"
        if not os.path.isfile(iuv):
            raise TryOnError(f"{image}: no DensePose output beside the {role} photo ({iuv}); "
                             f"pass --{role}_iuv")
    if not os.path.isfile(iuv):
        raise TryOnError(f"--{role}_iuv {iuv}: file not found")
    if iuv.lower().endswith(".png"):
        ref = IuvRef(png=iuv, inds=iuv_png.inds_path_for(iuv))
    else:
        try:
            index = DumpIndex(iuv)
        except detectron2_dump.DumpError as e:
            raise TryOnError(str(e)) from None
        ref = index.ref(image)
        if ref is None or ref.problem:
            raise TryOnError(f"{iuv}: {ref.problem if ref else 'no entry'} for {os.path.basename(image)}")
    if parse is None and os.path.isfile(stem + "_parse.png"):
        parse = stem + "_parse.png"
    return ImageRef(name=os.path.basename(stem), image=image, item="", iuv=ref, parse=parse)


def read_photo(ref: ImageRef, select: str = "largest", max_pixels: int = images.MAX_PIXELS) -> Photo:
    """Decodes and checks a photo (uint8 `[h, w, 3]`), its DensePose (uint8 `[h, w, 3]`, the same size,
    a person present; `select` picks one of several people) and parsing map (uint8 `[h, w]`); an image
    over `max_pixels` is refused from its header. Raises TryOnError naming the file at fault."""
    try:
        photo = load_photo(ref, select, max_pixels=max_pixels)
        check_person(photo.iuv, ref.iuv.describe())
    except RecordError as e:
        raise TryOnError(str(e)) from None
    return photo


def example_photos(example: Mapping[str, Any]) -> tuple[Photo, Photo]:
    """(model, person) Photos of a data_schema example (a test set's): images and IUV as they are,
    each garment mask `[H, W, 1]` as a parsing map `[H, W]` holding the example's garment kind + 1 on
    the garment (what make_example turns back into the mask)."""
    kind = int(np.asarray(example["garment_kind"]))

    def one(role: str) -> Photo:
        parse = (np.asarray(example[f"{role}_mask"])[..., 0] > 0).astype(np.uint8) * np.uint8(kind + 1)
        return Photo(np.asarray(example[f"{role}_image"]), np.asarray(example[f"{role}_iuv"]), parse)

    return one("model"), one("person")


@dataclasses.dataclass(frozen=True)
class Pair:
    """One try-on to make: the model photo M (wearing the garment) and the person photo P, with the
    names messages give them (file paths for infer, upload names for the web page) and `label`, what
    a note calls the result (infer: the output path)."""

    model: Photo
    person: Photo
    model_name: str = "model photo"
    person_name: str = "person photo"
    label: str = "the try-on"


def keep_paired_parsing(pair: Pair, needs_parsing: bool, model_alone: bool = False) -> tuple[Pair, list[str]]:
    """The pair with parsing maps kept only when both photos have one (an example has parsing for both
    photos or for neither, as in training), and the one-line notes to show. With `model_alone`
    (TryOn.uses_model_parsing_alone) the model photo's map is also kept without the person's: the
    checkpoint trained on that case. `needs_parsing` (TryOn.needs_parsing): say that a checkpoint
    trained on parsing maps only gets none."""
    model, person = pair.model, pair.person
    if model_alone and model.parse is not None and person.parse is None:
        return pair, []
    missing = [name for p, name in ((model, pair.model_name), (person, pair.person_name)) if p.parse is None]
    notes = []
    if missing and len(missing) < 2:
        notes.append(f"{missing[0]}: no parsing map (NAME_parse.png or --*_parse) while the other photo "
                     f"has one; both are ignored and the DensePose garment region is replaced")
    if missing and needs_parsing:
        notes.append(f"{pair.label}: this checkpoint needs parsing maps (trained with "
                     f"model.parse_region=True and model.parse_dropout=0) and {missing[0]} has none: "
                     f"it replaces the whole DensePose garment region instead, which it never trained "
                     f"on; give NAME_parse.png for both photos or use a checkpoint trained with "
                     f"model.parse_dropout > 0")
    if missing:
        pair = dataclasses.replace(pair, model=dataclasses.replace(model, parse=None),
                                   person=dataclasses.replace(person, parse=None))
    return pair, notes


def make_example(model: preprocess.Fitted, person: preprocess.Fitted,
                 garment_kind: int) -> dict[str, np.ndarray]:
    """A data_schema example (no target) from two photos letterboxed to the network's size `[H, W]`;
    the garment masks `[H, W, 1]` come from the parsing maps (all 0 without one)."""
    ex = data_schema.empty_example(*person.image.shape[:2])
    ex.update(model_image=model.image, model_iuv=model.iuv, person_image=person.image, person_iuv=person.iuv,
              model_mask=preprocess.parse_mask(model.parse, garment_kind, model.image.shape[:2]),
              person_mask=preprocess.parse_mask(person.parse, garment_kind, person.image.shape[:2]),
              garment_kind=np.int32(garment_kind))
    return ex


def unchanged_reason(person: np.ndarray, image: np.ndarray, soft_region: np.ndarray, person_name: str,
                     garment_kind: int) -> str | None:
    """One line saying why the try-on `image` (uint8 `[h, w, 3]`) equals the `person` photo (uint8
    `[h, w, 3]`) in the garment region (`soft_region` R~, float `[h, w, 1]`), else None."""
    inside = np.asarray(soft_region)[..., 0] > 0
    kind = densepose.GARMENT_KINDS[garment_kind]
    if not inside.any():
        return (f"{person_name}: DensePose finds none of the {kind} garment's body parts on the person, "
                f"so there is nothing to replace: the output is the person photo unchanged")
    if np.array_equal(image[inside], person[inside]):
        return (f"{person_name}: the try-on equals the person photo inside the {kind} garment region "
                f"({int(inside.sum())} pixels): the networks kept the person's own pixels there")
    return None


@dataclasses.dataclass(frozen=True)
class Result:
    """One try-on: `image` uint8 `[h, w, 3]` at the person photo's size; `soft_region` R~ float
    `[h, w, 1]` there (0: P's own bytes); `stages` {STAGES key: uint8 `[H, W, 3]`} at the network's
    size; `inputs` (M, P) letterboxed, uint8 `[H, W, 3]`; `notes`, one line each (parsing maps
    dropped, a result equal to P and why)."""

    image: np.ndarray
    soft_region: np.ndarray
    stages: dict[str, np.ndarray]
    inputs: tuple[np.ndarray, np.ndarray]
    notes: tuple[str, ...] = ()

    def sheet(self) -> np.ndarray:
        """uint8 `[H, 6 W, 3]`: M and P as the networks saw them, then W, A, TRN's and FTN's outputs."""
        return np.concatenate(list(self.inputs) + [self.stages[k] for k in STAGES], axis=1)


# ---------------------------------------------------------------- the networks

class TryOn:
    """One checkpoint's generators and the functions compiled for them, for this object's life.

    `tryon(pairs) -> [Result]` runs every step; `fit`, `run`, `compose` and `full_resolution` are the
    steps, for callers that need the networks' raw outputs (benchmarks.fullres).
    """

    def __init__(self, config: ml_collections.ConfigDict, params: dict, checkpoint: str | None = None):
        """config: the training config (its `model` section builds the networks); params: host or
        device `{"pan", "trn", "ftn"}`; checkpoint: where they came from (shown to users), if anywhere."""
        self.config = config
        self.checkpoint = checkpoint
        self.model_cfg = ml_collections.FrozenConfigDict(config.model)
        self.height, self.width = int(config.model.height), int(config.model.width)
        self.params = jax.device_put(params)
        # models.tryon.forward (params, uint8 data_schema batch) -> outputs, compiled once per batch
        # size for this TryOn's life; public so benchmarks.inference times exactly this function.
        self.forward = jax.jit(functools.partial(tryon_lib.forward, model_cfg=self.model_cfg))
        # One compilation per (photo size, scaled config); scaled_model_config is static.
        self._full = jax.jit(tryon_lib.full_resolution_tryon, static_argnames="model_cfg")

    @property
    def garment_kind(self) -> int:
        """The garment the checkpoint trained to transfer (model.garment_kind), as an index into
        densepose.GARMENT_KINDS."""
        return densepose.GARMENT_KINDS.index(self.model_cfg.garment_kind)

    @property
    def needs_parsing(self) -> bool:
        """Trained with model.parse_region on parsing masks only (model.parse_dropout = 0): photos
        without parsing maps get the DensePose-only region R_P, which it never saw in training."""
        m = self.model_cfg
        return bool(m.parse_region) and float(m.parse_dropout) == 0.0

    @property
    def uses_model_parsing_alone(self) -> bool:
        """Trained with model.ftn_paint and model.person_parse_dropout > 0: a model photo's parsing map
        is used without the person's (models.tryon.paint_region), a case it saw in training."""
        m = self.model_cfg
        return bool(m.ftn_paint) and float(m.person_parse_dropout) > 0.0

    def fit(self, pair: Pair) -> tuple[preprocess.Fitted, preprocess.Fitted]:
        """(M, P) letterboxed to the network's `[H, W]` (preprocess.fit: the dataset builder's resize)."""
        return tuple(preprocess.fit(p.image, p.iuv, self.height, self.width, p.parse, where=name)
                     for p, name in ((pair.model, pair.model_name), (pair.person, pair.person_name)))

    def run(self, examples: Sequence[dict], batch_size: int | None = None) -> list[dict[str, np.ndarray]]:
        """Network outputs (RUN_KEYS present in the forward's output; float numpy `[H, W, C]`) per
        data_schema example; batches of `batch_size` (default: all), the last padded with empty
        examples, so each batch size compiles once."""
        n = len(examples)
        bs = batch_size or n
        results: list[dict[str, np.ndarray]] = []
        for start in range(0, n, bs):
            chunk = list(examples[start: start + bs])
            chunk += [data_schema.empty_example(self.height, self.width)] * (bs - len(chunk))
            batch = {k: np.stack([np.asarray(ex[k]) for ex in chunk]) for k in data_schema.KEYS}
            out = jax.device_get(self.forward(self.params, batch))
            results += [{k: np.asarray(out[k][i]) for k in RUN_KEYS if k in out}
                        for i in range(min(bs, n - start))]
        return results

    def full_resolution(self, model: Photo, person: Photo, out: dict[str, np.ndarray],
                        box, garment_kind: int) -> dict[str, np.ndarray]:
        """The try-on at the person photo's size (models.tryon.full_resolution_tryon) from one
        example's network outputs `out` (`run`) and the person's Letterbox `box`; float numpy
        `[h, w, C]`: output, soft_region, warped, refined, region, valid, ..."""
        maps = preprocess.upsample_maps(out, box, tryon_lib.RESOLUTION_FREE)
        mask = lambda photo: preprocess.parse_mask(photo.parse, garment_kind, photo.image.shape[:2])
        batch = preprocess.full_resolution_example(model.image, model.iuv, mask(model), person.image,
                                                   person.iuv, mask(person), garment_kind)
        cfg = tryon_lib.scaled_model_config(self.model_cfg, preprocess.photo_scale(box))
        res = jax.device_get(self._full({k: v[None] for k, v in maps.items()}, batch, model_cfg=cfg))
        return {k: np.asarray(v[0]) for k, v in res.items()}

    def compose(self, model: Photo, person: Photo, fitted: tuple[preprocess.Fitted, preprocess.Fitted],
                out: dict[str, np.ndarray], garment_kind: int,
                resolution: str = "full") -> tuple[np.ndarray, np.ndarray]:
        """(try-on uint8 `[h, w, 3]`, its soft region R~ float `[h, w, 1]`) at the person photo's size
        from one example's network outputs `out` (`run`) and the pair as `fit` letterboxed it.

        resolution "full": made at the photo's resolution (`full_resolution`); "network": the
        network-size try-on pasted back (preprocess.paste_back). P's own bytes wherever R~ is 0.
        """
        if resolution not in RESOLUTIONS:
            raise TryOnError(f"--resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        p_fit = fitted[1]
        if resolution == "network":
            image = preprocess.paste_back(person.image, out["output"], preprocess.to_float(p_fit.image),
                                          out["soft_region"], p_fit.box)
            return image, preprocess.unfit(out["soft_region"], p_fit.box)
        full = self.full_resolution(model, person, out, p_fit.box, garment_kind)
        return preprocess.keep_person(person.image, full["output"], full["soft_region"]), full["soft_region"]

    def tryon(self, pairs: Sequence[Pair], garment_kind: int | None = None, resolution: str = "full",
              batch_size: int | None = None) -> list[Result]:
        """Every step for each pair: parsing kept for both photos or neither (keep_paired_parsing),
        letterbox, the networks in batches of `batch_size` (default: all), the try-on composed at
        the person photo's size at `resolution`, and why it equals P where it does (unchanged_reason).
        garment_kind: index into densepose.GARMENT_KINDS (default: the checkpoint's)."""
        kind = self.garment_kind if garment_kind is None else garment_kind
        if resolution not in RESOLUTIONS:
            raise TryOnError(f"--resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        kept = [keep_paired_parsing(p, self.needs_parsing, self.uses_model_parsing_alone) for p in pairs]
        fitted = [self.fit(pair) for pair, _ in kept]
        outs = self.run([make_example(m, p, kind) for m, p in fitted], batch_size)
        results = []
        for (pair, notes), fit, out in zip(kept, fitted, outs):
            image, soft = self.compose(pair.model, pair.person, fit, out, kind, resolution)
            reason = unchanged_reason(pair.person.image, image, soft, pair.person_name, kind)
            results.append(Result(image, soft, {k: preprocess.to_uint8(out[k]) for k in STAGES},
                                  (fit[0].image, fit[1].image), tuple(notes) + ((reason,) if reason else ())))
        return results


# ---------------------------------------------------------------- command lines

def add_arguments(p: argparse.ArgumentParser) -> None:
    """--select and --resolution: how one pair is tried on, for infer and the web page alike."""
    p.add_argument("--select", choices=("largest", "central", "score"), default="largest",
                   help="which person to use when DensePose found several")
    p.add_argument("--resolution", choices=RESOLUTIONS, default="full",
                   help="full: the try-on made at the person photo's resolution (default); network: "
                        "made at the network's size and pasted back")
