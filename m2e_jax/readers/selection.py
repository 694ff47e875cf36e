"""Choosing one person when DensePose found several (shared by the PNG and dump readers)."""

from __future__ import annotations

import numpy as np

# "score": the highest detection score (a dump's scores; a Detectron INDS value is the score rank).
SELECT_MODES = ("score", "largest", "central")
Select = str | int


def check_select(select: Select, allowed: tuple[str, ...] = SELECT_MODES) -> None:
    """Raises ValueError unless `select` is one of `allowed` or a non-negative instance number."""
    if isinstance(select, bool) or not (isinstance(select, int) and select >= 0 or select in allowed):
        raise ValueError(f"select: expected one of {allowed} or an instance number >= 0, got {select!r}")


def choose(select: Select, *, areas: np.ndarray, centers: np.ndarray, image_hw: tuple[int, int],
           scores: np.ndarray | None = None) -> int:
    """Index (0-based, into the candidate list) of the person to keep.

    Args:
      select: "score" (highest detection score), "largest" (largest area), "central" (centre nearest
        the image centre), or an int: that candidate's position.
      areas: `[n]` pixel areas. centers: `[n, 2]` (y, x) centres. image_hw: (H, W).
      scores: `[n]` detection scores, needed for "score".
    Ties go to the lower index, so the choice is deterministic.
    """
    n = len(areas)
    if n == 0:
        raise ValueError("no person instance to choose from")
    if isinstance(select, int) and not isinstance(select, bool):
        if select >= n:
            raise ValueError(f"select: instance {select} requested but only {n} found")
        return select
    if select == "score":
        if scores is None:
            raise ValueError("select='score' needs detection scores")
        return int(np.argmax(scores))
    if select == "largest":
        return int(np.argmax(areas))
    if select == "central":
        mid = (np.asarray(image_hw, np.float64) - 1) / 2
        return int(np.argmin(((np.asarray(centers, np.float64) - mid) ** 2).sum(-1)))
    check_select(select)
    raise AssertionError("unreachable")
