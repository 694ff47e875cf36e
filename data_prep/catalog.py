"""What a dataset reader hands the builder: per split, the photos (with their DensePose files) and the
examples to assemble from them, plus problems found while listing (missing partner files)."""

from __future__ import annotations

import dataclasses

from data_prep.readers.detectron2_dump import DumpEntry


@dataclasses.dataclass(frozen=True)
class IuvRef:
    """Where one photo's DensePose comes from: a Detectron PNG (+ instance map) or a dump entry."""

    png: str | None = None
    inds: str | None = None
    dump: DumpEntry | None = None
    dump_path: str | None = None

    def describe(self) -> str:
        return self.png if self.png else f"{self.dump_path} [{self.dump.file_name if self.dump else '?'}]"


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """One photo. `name` is unique within its split; `item` groups photos of the same garment/person."""

    name: str
    image: str
    item: str
    iuv: IuvRef | None = None  # None: no DensePose output found (reported by validation)
    parse: str | None = None   # parsing PNG: 0 other, 1 upper garment, 2 lower garment
    garment_kind: int | None = None  # known from the dataset (e.g. DeepFashion category), else None


@dataclasses.dataclass(frozen=True)
class ExampleRef:
    """One try-on example by image names; `target` None means no ground truth (has_target = 0)."""

    model: str
    person: str
    target: str | None
    paired: bool
    garment_kind: int
    where: str  # the file/row it came from, for reports

    @property
    def key(self) -> str:
        kind = "p" if self.paired else ("t" if self.target else "u")
        return f"{kind}|{self.model}|{self.person}|{self.target or ''}"


@dataclasses.dataclass(frozen=True)
class Problem:
    """A record left out of the dataset: the file at fault and a one-line reason."""

    file: str
    reason: str
    split: str = ""

    def line(self) -> str:
        return f"{self.split + ': ' if self.split else ''}{self.file}: {self.reason}"


@dataclasses.dataclass
class SplitCatalog:
    images: dict[str, ImageRef] = dataclasses.field(default_factory=dict)
    examples: list[ExampleRef] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)
