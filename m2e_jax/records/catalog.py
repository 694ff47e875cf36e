"""What a dataset reader hands the builder: per split, the photos (with their DensePose files) and the
examples to assemble from them (photos as m2e_jax.readers.photos.ImageRef), plus problems found while
listing (missing partner files)."""

from __future__ import annotations

import dataclasses

from m2e_jax.readers.photos import ImageRef


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
    notes: list[str] = dataclasses.field(default_factory=list)  # how the reader read the layout, said once
