"""The staged hybrid schedule (method.md): which stage and which data stream each step uses.

Stages: 1 PAN alone, 2 + TRN, 3 + FTN (paired batches only), 4 all three end to end with paired
and unpaired batches alternating `paired_per_cycle : unpaired_per_cycle`. Everything here is a pure
function of the step, which is what makes resuming exact: the batch of step s is fixed by s alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

STAGE_NAMES = {1: "pan", 2: "trn", 3: "ftn", 4: "joint"}


class StepPlan(NamedTuple):
    stage: int      # 1..4
    paired: bool    # which stream the batch comes from
    position: int   # how many batches that stream has served before this step


def stage_bounds(sched: Any) -> list[tuple[int, int, int]]:
    """[(stage, first_step, end_step)] for the non-empty stages, in order."""
    out, start = [], 0
    for stage, length in enumerate((sched.pan_steps, sched.trn_steps, sched.ftn_steps, sched.joint_steps), 1):
        if length > 0:
            out.append((stage, start, start + length))
        start += length
    return out


def total_steps(sched: Any) -> int:
    return sched.pan_steps + sched.trn_steps + sched.ftn_steps + sched.joint_steps


def plan(step: int, sched: Any) -> StepPlan:
    """Stage, stream and stream position of `step` (0-based; steps past the end stay in the last stage)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    bounds = stage_bounds(sched)
    stage = next((st for st, _, end in bounds if step < end), bounds[-1][0])
    joint_start = sched.pan_steps + sched.trn_steps + sched.ftn_steps
    if stage < 4:
        return StepPlan(stage, True, step)
    p, u = sched.paired_per_cycle, sched.unpaired_per_cycle
    pos = step - joint_start
    cycles, phase = divmod(pos, p + u)
    if phase < p:
        return StepPlan(4, True, joint_start + cycles * p + phase)
    return StepPlan(4, False, cycles * u + phase - p)


def uses_unpaired(sched: Any) -> bool:
    return sched.joint_steps > 0 and sched.unpaired_per_cycle > 0
