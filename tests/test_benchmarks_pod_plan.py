"""m2e_jax/benchmarks/pod_plan.py: the plan's arithmetic, its cache and command line (with a fake
compiler), and the real thing: the tiny config's train step compiled for TPU v5e through libtpu,
checked against the CPU's compile of the same program.

libtpu lives in its own environment (requirements-tpu-aot.txt); the TPU test uses
`.venv-tpu-aot/bin/python` in the repository (or the interpreter named by $M2E_TPU_AOT_PYTHON) and is
skipped, saying how to create it, where there is none.
"""

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from m2e_jax.benchmarks import pod_plan
from tests.conftest import side_environment

ROOT = Path(__file__).resolve().parent.parent

# Two all-reduces as XLA:TPU prints them (the probe in benchmarks/RESULTS.md "Pod plan": a psum of a
# [256, 256] float32 gradient), one of them a tuple, and lines that are not all-reduces.
HLO = """\
  %psum.7 = f32[256,256]{1,0:T(8,128)S(1)} all-reduce(%fusion), channel_id=1, replica_groups={{0,1,2,3}}
  %ar.2 = (bf16[3,3,64,64]{3,2,1,0}, f32[64]{0}) all-reduce-start(%a, %b), channel_id=2, to_apply=%r
  %ar.3 = (bf16[3,3,64,64]{3,2,1,0}, f32[64]{0}) all-reduce-done(%ar.2)
  %fusion = f32[256,256]{1,0} fusion(%p0), kind=kLoop, calls=%fused_computation
"""


@pytest.fixture(autouse=True)
def _restore_environ():
    """main() sets JAX_PLATFORMS (variable and jax.config), TPU_SKIP_MDS_QUERY and XLA_FLAGS for its
    own process: keep them out of the other tests and their subprocesses."""
    import jax

    saved, platforms = dict(os.environ), jax.config.jax_platforms
    yield
    os.environ.clear()
    os.environ.update(saved)
    jax.config.update("jax_platforms", platforms)


def test_all_reduce_bytes_counts_every_buffer_once():
    assert pod_plan.all_reduce_bytes(HLO) == 256 * 256 * 4 + 3 * 3 * 64 * 64 * 2 + 64 * 4
    assert pod_plan.all_reduce_bytes("%f = f32[8]{0} add(%a, %b)") == 0


def test_parse_target():
    assert pod_plan.parse_target("v5e:2x2") == ("tpu", 4)
    assert pod_plan.parse_target("v4:2x2x1") == ("tpu", 4)
    assert pod_plan.parse_target("v5p:4x4x4") == ("tpu", 64)
    assert pod_plan.parse_target("cpu:8") == ("cpu", 8)
    for bad in ("v7x:2x2", "v5e", "v5e:2xa", "cpu:0", "v5e:0x2"):
        with pytest.raises(pod_plan.PlanError, match="--targets"):
            pod_plan.parse_target(bad)


def test_libtpu_too_old_for_a_chip_is_named():
    """libtpu 0.0.42.1 (jax[tpu] 0.10.2's pin) dies with SIGSEGV compiling for v6e (RESULTS.md 10):
    the plan says so in one line before it starts, and lets every other chip and version through."""
    msg = pod_plan.libtpu_error("v6e", "0.0.42.1")
    assert "libtpu 0.0.42.1" in msg and ">= 0.0.43" in msg and "\n" not in msg
    for chip, version in (("v6e", "0.0.43.2"), ("v6e", "0.0.44.dev20261201"), ("v6e", "0.1.0"),
                          ("v6e", None), ("v5e", "0.0.42.1"), ("v4", "0.0.40")):
        assert pod_plan.libtpu_error(chip, version) is None, (chip, version)


def test_each_point_compiles_in_a_fresh_process():
    """The command line compiles each point in its own spawned process (a compile's host memory
    does not come back to the process that compiled: a v6e --search process held 30 GB by its third
    point). Its answer, or its one-line error, comes back; a process killed mid-compile is named."""
    import inspect

    assert inspect.signature(pod_plan.main).parameters["compile_fn"].default is \
        pod_plan.compile_point_in_fresh_process
    assert pod_plan.in_fresh_process(os.getpid) != os.getpid()
    assert pod_plan.in_fresh_process(pod_plan.parse_target, "v5e:2x2") == pod_plan.parse_target("v5e:2x2")
    with pytest.raises(pod_plan.PlanError, match="--targets"):
        pod_plan.in_fresh_process(pod_plan.parse_target, "v9:2x2")
    # how the child ended, named: the out-of-memory killer's SIGKILL, a person's SIGTERM, an exit
    with pytest.raises(pod_plan.PlanError, match=r"raise_signal\(<Signals.SIGKILL: 9>,\) was killed by "
                       r"SIGKILL without an answer \(.*out of host memory\?\)$"):
        pod_plan.in_fresh_process(signal.raise_signal, signal.SIGKILL)
    with pytest.raises(pod_plan.PlanError, match=r"killed by SIGTERM without an answer$"):
        pod_plan.in_fresh_process(signal.raise_signal, signal.SIGTERM)
    with pytest.raises(pod_plan.PlanError, match=r"_exit\(3,\) exited with status 3 without an answer$"):
        pod_plan.in_fresh_process(os._exit, 3)
    # an answer pickle cannot carry comes back as one line, not as a pipe that never answers
    with pytest.raises(pod_plan.PlanError, match=r"allocate_lock\(\): its answer could not be sent back"):
        pod_plan.in_fresh_process(threading.Lock)


def test_next_search_batch_doubles_then_bisects():
    # largest batch that fits is 11: 4, 8, 16 (no), 12 (no), 10, 11, then 12 is known -> done
    fit = lambda b: b <= 11
    known: dict[int, bool] = {}
    order = []
    while (b := pod_plan.next_search_batch(known, 4)) is not None:
        order.append(b)
        known[b] = fit(b)
    assert order == [4, 8, 16, 12, 10, 11]
    assert max(b for b, ok in known.items() if ok) == 11
    # nothing fits: halve down to 1
    known = {4: False}
    while (b := pod_plan.next_search_batch(known, 4)) is not None:
        known[b] = False
    assert sorted(known) == [1, 2, 4]


def test_search_follows_the_peaks_line_while_it_agrees():
    """Led by `projected_max_batch`: from two fitting points a right line finds the edge in two
    compiles (its batch, then the one above); a line below a batch that fitted is left for
    doubling, and once a batch has failed the bracket is bisected."""
    assert pod_plan.next_search_batch({8: True, 16: True}, 8, projection=20) == 20
    assert pod_plan.next_search_batch({8: True, 16: True, 20: True}, 8, projection=20) == 21
    assert pod_plan.next_search_batch({8: True, 16: True, 20: True, 21: False}, 8, projection=20) is None
    # the line puts the edge below 16, which fitted: doubling as without a line
    assert pod_plan.next_search_batch({8: True, 16: True}, 8, projection=12) == 32
    # the line says 24 fits, and it did not: bisection
    assert pod_plan.next_search_batch({8: True, 24: False}, 8, projection=30) == 16
    assert pod_plan.next_search_batch({8: True, 24: False}, 8, projection=24) == 16
    # once a batch has failed the bracket is bisected, but an edge the line puts at the largest
    # batch that fits is checked from above
    assert pod_plan.next_search_batch({8: True, 24: False}, 8, projection=21) == 16
    assert pod_plan.next_search_batch({8: True, 21: True, 24: False}, 8, projection=21) == 22
    # after the first failure, the line through it and the largest that fits puts the edge just
    # below it (v6e: 16 and 36 -> 35): that batch may decide it; after a second failure the line
    # has misled once (v6e's 35 failed too, the peak flat at 29.3 GiB): bisection
    assert pod_plan.next_search_batch({8: True, 16: True, 36: False}, 8, projection=35) == 35
    assert pod_plan.next_search_batch({8: True, 16: True, 35: True, 36: False}, 8, projection=35) is None
    assert pod_plan.next_search_batch({8: True, 16: True, 35: False, 36: False}, 8, projection=34) == 25
    # nothing fits yet: no line to follow
    assert pod_plan.next_search_batch({8: False}, 8, projection=30) == 4
    # configs/deepfashion.py on v4 (benchmarks/pod_plan.json): the line through 39 (28.35 GiB) and
    # 44 (32.33) puts the edge at 39: 40 is checked once; it fitted (28.51) and the line through it
    # and 44 puts the edge at 40 again: bisection, not one batch per compile
    v4_df = {4: True, 8: True, 26: True, 35: True, 39: True, 44: False}
    assert pod_plan.next_search_batch(v4_df, 4, projection=39) == 40
    assert pod_plan.next_search_batch({**v4_df, 40: True}, 4, projection=40) == 42
    # with no failure above, the line still leads one batch at a time
    assert pod_plan.next_search_batch({8: True, 20: True, 21: True}, 8, projection=21) == 22


def test_projections_give_way_to_a_chips_own_line_and_never_just_say_no():
    """benchmarks/pod_plan.json, configs/pod.py: v5p's 148 per chip (78.69 GiB) would tell v4's and
    v6e's 32 GiB only "no"; and v4, with its own compiles at 16 and 40 per chip, is read by its own
    line, not by v5p's points (the same program's peak differs by up to 29% between TPUs)."""
    gib = pod_plan.GIB
    v5p = {f"v5p-{b}": _row(b, peak * gib, target="v5p:2x2x1") for b, peak in ((16, 10.49), (148, 78.69))}
    assert [(r["chip"], r["per_chip"]) for r in pod_plan.plan_rows(v5p, project=["v4", "v6e"])] == [
        ("v5p", 16), ("v4", 16), ("v6e", 16), ("v5p", 148)]
    v4 = {f"v4-{b}": _row(b, peak * gib, target="v4:2x2x1") for b, peak in ((16, 11.30), (40, 25.36))}
    both = {**v5p, **v4, "v5p-24": _row(24, 14.5 * gib, target="v5p:2x2x1")}
    rows = pod_plan.plan_rows(both, project=["v4", "v5p", "v6e"])
    projected = [(r["chip"], r["per_chip"], r["compiled_for"]) for r in rows
                 if r["compiled_for"] != "compiled"]
    assert projected == [
        ("v6e", 16, "projected from v4"), ("v6e", 40, "projected from v4"), ("v6e", 24, "projected from v5p")]
    limits = [(r["chip"], r["compiled_for"], r["compiled"])
              for r in pod_plan.max_batch_rows(both, project=["v4", "v5p", "v6e"])]
    assert limits == [("v4", "compiled", "16,40"), ("v6e", "projected from v4", "16,40"),
                      ("v5p", "compiled", "16,24,148"), ("v6e", "projected from v5p", "24")]


def test_search_follows_the_bend_near_the_edge():
    """configs/pod.py compiled for v5p (benchmarks/pod_plan.json): peaks bend off the line near HBM.
    The line through all the points would put the edge at 172 (two batches above 170); the line
    through the two largest that fit, 166 and 170, puts it where the bend heads: 190. Once a batch
    above compiled past the margin, the line runs through it and the largest that fits."""
    gib = pod_plan.GIB
    v5p = pod_plan.CHIPS["v5p"]
    rows = [_row(b, peak * gib, target="v5p:2x2x1")
            for b, peak in ((8, 5.96), (16, 10.49), (148, 78.69), (161, 80.15), (166, 80.38), (170, 81.23))]
    assert pod_plan.projected_max_batch(rows, v5p) == 172
    assert pod_plan.search_projection(rows, v5p) == 190 == 170 + int((0.9 * 95 - 81.23) / (0.85 / 4))
    assert pod_plan.search_projection(rows[:2], v5p) == pod_plan.projected_max_batch(rows[:2], v5p)
    # a point above them that compiled past the margin: the line through it and the largest that
    # fits, 170 + (0.9 * 95 - 81.23) / ((86 - 81.23) / 10)
    assert pod_plan.search_projection(rows + [_row(180, 86 * gib, target="v5p:2x2x1")], v5p) == 178
    # one XLA could not compile at all has no peak: the two largest that fit lead
    assert pod_plan.search_projection(rows + [_row(180, 0, fits=False, target="v5p:2x2x1")], v5p) == 190
    # v6e (session 15): 7.09 GiB at 8 per chip, 13.19 at 16, 29.29 at 36 (over 90% of 32 GiB)
    v6e = [_row(b, peak * gib, target="v6e:2x2") for b, peak in ((8, 7.09), (16, 13.19), (36, 29.29))]
    assert pod_plan.search_projection(v6e[:2], pod_plan.CHIPS["v6e"]) == 36
    assert pod_plan.search_projection(v6e, pod_plan.CHIPS["v6e"]) == 35


def test_search_line_never_lies_flat():
    """configs/deepfashion.py compiled for v6e (benchmarks/pod_plan.json): 31 and 32 per chip came
    out at 27.90 and 27.91 GiB, and the line through them put the edge at 205 per chip. The line
    rises at least a quarter of the mean rise from the smallest batch that fits (5.43 GiB at 4):
    35. A steeper bend stays the line's own (v5p above: 0.46 of its mean)."""
    gib = pod_plan.GIB
    v6e = pod_plan.CHIPS["v6e"]
    rows = [_row(b, peak * gib, target="v6e:2x2")
            for b, peak in ((4, 5.43), (24, 22.48), (31, 27.90), (32, 27.91))]
    flat = (27.91 - 27.90) * gib
    # the flat line alone: 120 per chip from these rounded peaks (205 from the cached bytes)
    assert pod_plan.edge_on_line(27.90 * gib - flat * 31, flat, v6e) == 120
    mean = (27.91 - 5.43) / (32 - 4) * gib
    assert pod_plan.search_projection(rows, v6e) == 35 == int(31 + (0.9 * 32 - 27.90) * gib // (mean / 4))
    # with one point past the margin above, the line through it leads as before
    assert pod_plan.search_projection(rows + [_row(40, 30.5 * gib, target="v6e:2x2")], v6e) == 34 == int(
        32 + (0.9 * 32 - 27.91) / ((30.5 - 27.91) / 8))
    # two points that fit are their own mean: no bound
    assert pod_plan.search_projection(rows[2:], v6e) > 100


def _row(per_chip: int, peak: float, **kw) -> dict:
    row = {"config": "configs/pod.py", "target": "v5e:2x2", "per_chip": per_chip, "dtype": "bfloat16",
           "stage": 4, "remat": False, "size": "256x192", "chips": 4, "flops": 1.2e12,
           "model_flops": 1e12 * per_chip, "argument_bytes": 0.4 * pod_plan.GIB,
           "temp_bytes": peak - 0.4 * pod_plan.GIB, "peak_bytes": peak, "all_reduce_bytes": 120e6}
    return {**row, **kw}


def test_plan_row_arithmetic():
    r = pod_plan.plan_row(_row(4, 8 * pod_plan.GIB), "v5e")
    assert r["hbm_use"] == pytest.approx(0.5) and r["fits"] == "yes"
    # 4e12 FLOP at 40% of 197 TFLOP/s; 4 images per step
    assert r["step_ms_40"] == pytest.approx(4e12 / (0.4 * 197e12) * 1e3)
    assert r["img_s_40"] == pytest.approx(4 / (4e12 / (0.4 * 197e12)))
    assert r["host_img_s_40"] == pytest.approx(8 * r["img_s_40"])  # 8 v5e chips per host
    # ring all-reduce: 2 (n-1)/n of the bytes at 400 GB/s
    assert r["all_reduce_ms"] == pytest.approx(2 * 3 / 4 * 120e6 / 400e9 * 1e3)
    assert pod_plan.plan_row(_row(4, 15 * pod_plan.GIB), "v5e")["fits"] == "no"  # > 90% of 16 GiB
    assert pod_plan.plan_row(_row(4, 1, fits=False), "v5e")["fits"].startswith("no")


def test_tpu_compiles_read_against_other_tpus_are_marked_projected():
    cache = {"k": _row(4, 8 * pod_plan.GIB, flops=1e12, fits=True)}
    rows = pod_plan.plan_rows(cache, project=["v4", "v5e", "v6e"])
    assert [(r["chip"], r["compiled_for"]) for r in rows] == [
        ("v5e", "compiled"), ("v4", "projected from v5e"), ("v6e", "projected from v5e")]
    assert rows[2]["step_ms_40"] == pytest.approx(rows[0]["step_ms_40"] * 197 / 918)
    # A compile that ran out of v5e's HBM says nothing about v4's 32 GiB: read against v5e only.
    failed = {"k": _row(32, 0, fits=False)}
    assert [r["chip"] for r in pod_plan.plan_rows(failed, project=["v4", "v6e"])] == ["v5e"]
    both = {**cache, "f": _row(32, 0, fits=False)}
    limits = {r["chip"]: r for r in pod_plan.max_batch_rows(both, project=["v4"])}
    assert limits["v5e"]["min_nofit_compiled"] == 32 and limits["v4"]["min_nofit_compiled"] is None
    assert limits["v4"]["compiled"] == "4" and limits["v5e"]["compiled"] == "4,32"
    # v4's own compile of the point replaces v5e's projection onto v4; the other points stay projected.
    v4 = {**cache, "v4": _row(4, 7 * pod_plan.GIB, target="v4:2x2x1"), "b": _row(8, 9 * pod_plan.GIB)}
    assert [(r["chip"], r["per_chip"], r["compiled_for"], r["hbm_use"])
            for r in pod_plan.plan_rows(v4, project=["v4"])] == [
        ("v4", 4, "compiled", pytest.approx(7 / 32)), ("v5e", 4, "compiled", pytest.approx(8 / 16)),
        ("v5e", 8, "compiled", pytest.approx(9 / 16)), ("v4", 8, "projected from v5e", pytest.approx(9 / 32))]
    limits = pod_plan.max_batch_rows(v4, project=["v4"])
    assert [(r["chip"], r["compiled_for"], r["compiled"]) for r in limits] == [
        ("v4", "compiled", "4"), ("v5e", "compiled", "4,8"), ("v4", "projected from v5e", "8")]
    only = {"v4": v4["v4"], "k": cache["k"]}  # v5e's only point compiled for v4 too: no projection row
    assert [r["chip"] for r in pod_plan.max_batch_rows(only, project=["v4"])] == ["v4", "v5e"]
    # Two TPUs compiled the point, a third did not: it is read against the larger peak only (v5e's).
    two = {**only, "b": _row(8, 9 * pod_plan.GIB)}
    onto_v6e = [(r["per_chip"], r["compiled_for"]) for r in pod_plan.plan_rows(two, project=["v4", "v6e"])
                if r["chip"] == "v6e"]
    assert onto_v6e == [(4, "projected from v5e"), (8, "projected from v5e")]
    bigger_v4 = {**only, "v4": _row(4, 9 * pod_plan.GIB, target="v4:2x2x1")}
    assert [(r["chip"], r["compiled_for"]) for r in pod_plan.max_batch_rows(bigger_v4, project=["v4", "v6e"])
            ] == [("v4", "compiled"), ("v6e", "projected from v4"), ("v5e", "compiled")]
    cpu = pod_plan.plan_rows({"k": _row(4, pod_plan.GIB, target="cpu:8", chips=8)})
    assert [(r["chip"], r["compiled_for"]) for r in cpu] == [("h100", "CPU mesh (proxy)"),
                                                             ("a100", "CPU mesh (proxy)")]


def test_projected_max_batch_is_linear_in_the_compiled_points():
    rows = [_row(4, 4 * pod_plan.GIB), _row(8, 7 * pod_plan.GIB)]  # 1 GiB + 0.75 GiB per example
    base, slope = pod_plan.linear_memory_fit(rows)
    assert base == pytest.approx(pod_plan.GIB) and slope == pytest.approx(0.75 * pod_plan.GIB)
    # (0.9 * 16 - 1) / 0.75 = 17.87
    assert pod_plan.projected_max_batch(rows, pod_plan.CHIPS["v5e"], 0.1) == 17
    assert pod_plan.projected_max_batch(rows[:1], pod_plan.CHIPS["v5e"]) is None


def test_points_near_their_chips_hbm_are_neither_projected_nor_fitted():
    """Near its HBM XLA:TPU lays the program out for the chip it compiles for (benchmarks/pod_plan.json,
    configs/pod.py on v4: 11.30 GiB at 16 per chip, 25.36 at 40, then 29.30 at 44, off that line).
    Such a point is v4's own answer: not a projection for v5p's 95 GiB, and not a point of the line."""
    gib = pod_plan.GIB
    cache = {str(b): _row(b, peak * gib, target="v4:2x2x1")
             for b, peak in ((16, 11.30), (40, 25.36), (44, 29.30))}
    assert [pod_plan.squeezed(r) for r in cache.values()] == [False, False, True]  # 44: 92% > 90%
    assert pod_plan.squeezed(cache["40"], margin=0.25)  # 79% of 32 GiB
    assert pod_plan.squeezed(_row(8, gib, fits=False)) and not pod_plan.squeezed(
        _row(8, 40 * gib, target="cpu:8", chips=8))  # a CPU mesh has no HBM to squeeze into
    onto_v5p = [r["per_chip"] for r in pod_plan.plan_rows(cache, project=["v5p"]) if r["chip"] == "v5p"]
    assert onto_v5p == [16, 40]
    base, slope = pod_plan.linear_memory_fit(list(cache.values()))
    assert slope == pytest.approx((25.36 - 11.30) / 24 * gib) and base == pytest.approx(
        11.30 * gib - 16 * slope)
    limits = {r["chip"]: r for r in pod_plan.max_batch_rows(cache, project=["v5p"])}
    assert limits["v5p"]["compiled"] == "16,40"
    assert limits["v5p"]["max_fit_projected"] == int((0.9 * 95 * gib - base) // slope) == 142
    assert (limits["v4"]["max_fit_compiled"], limits["v4"]["min_nofit_compiled"]) == (40, 44)
    # the line's edge on v4 itself, (0.9 * 32 - 1.93) / 0.586: past 42, which compiled at 91%
    assert limits["v4"]["max_fit_projected"] == 45


def test_cli_compiles_searches_and_caches(tmp_path, capsys):
    """A fake compiler (peak 1 GiB + 1 GiB per example) through the command line: the search finds
    the largest per-chip batch within 90% of v5e's 16 GiB (13) by doubling once, then following the
    line through the peaks (13, then 14 to confirm the edge), every point lands in the cache, and a
    second run compiles nothing."""
    calls = []

    def fake_compile(config_spec, target, per_chip, dtype, stage, remat):
        calls.append(per_chip)
        return {**_row(per_chip, (1 + per_chip) * pod_plan.GIB), "config": config_spec, "target": target,
                "dtype": dtype or "bfloat16", "stage": stage, "remat": bool(remat)}

    cache = tmp_path / "plan.json"
    argv = ["--config", "configs/pod.py", "--targets", "v5e:2x2", "--per_chip", "4", "--search",
            "--cache", str(cache), "--markdown"]
    out = pod_plan.main(argv, compile_fn=fake_compile)
    assert calls == [4, 8, 13, 14]
    assert {r["per_chip"] for r in json.loads(cache.read_text())["points"]} == set(calls)
    best = [m for m in out["max_batch"] if m["chip"] == "v5e"][0]
    assert best["max_fit_compiled"] == 13 and best["min_nofit_compiled"] == 14
    assert best["max_fit_projected"] == 13
    assert "| configs/pod.py | v5e | compiled | bfloat16 |" in capsys.readouterr().out
    calls.clear()
    pod_plan.main(argv, compile_fn=fake_compile)
    assert calls == []


@pytest.mark.parametrize("argv, message", [
    (["--targets", "v9:2x2"], "--targets"),
    (["--config", "configs/nope.py"], "--config configs/nope.py"),
    (["--config", "configs/pod.py:bogus"], "unknown argument"),
    (["--per_chip", "0"], "--per_chip"),
    (["--report"], "nothing compiled"),
])
def test_cli_bad_input_is_one_line(argv, message, tmp_path):
    with pytest.raises(SystemExit) as e:
        pod_plan.main(argv + ([] if "--report" not in argv else ["--cache", str(tmp_path / "x.json")]),
                      compile_fn=lambda *a: pytest.fail("compiled"))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_cache_file_is_one_line(tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text("{}")
    with pytest.raises(pod_plan.PlanError, match=f"--cache {bad}"):
        pod_plan.load_cache(str(bad))


def _tpu_python() -> str:
    return side_environment("M2E_TPU_AOT_PYTHON", ".venv-tpu-aot", "python", "requirements-tpu-aot.txt",
                            ("libtpu", "flax", "optax"))


@pytest.mark.slow
def test_tiny_train_step_compiles_for_tpu_v5e_like_on_cpu(tmp_path):
    """configs/pod.py:local's joint step, 1 example per chip on 4 chips, compiled for TPU v5e (2x2)
    and for a 4-device CPU mesh in one run of the command line.

    The step's math (model FLOPs) is the same program on both; XLA:TPU's count of its compiled
    program is higher (its convolutions' rewritten forms, see pod_plan.model_flops): 13-26% above
    the CPU's here, depending on XLA_FLAGS; the TPU's memory holds at least the parameters and the
    optimizer state, as arguments and at the peak; the all-reduces carry at least every trained
    gradient, the same bytes on both."""
    python = _tpu_python()
    cache = tmp_path / "plan.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([python, "-m", "m2e_jax.benchmarks.pod_plan", "--config", "configs/pod.py:local",
                        "--targets", "v5e:2x2,cpu:4", "--per_chip", "1", "--cache", str(cache)],
                       cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {p["target"]: p for p in json.loads(cache.read_text())["points"]}
    tpu, cpu = rows["v5e:2x2"], rows["cpu:4"]
    assert tpu["device_kind"].startswith("TPU v5") and cpu["device_kind"] == "cpu"
    assert tpu["model_flops"] == pytest.approx(cpu["model_flops"], rel=0.1)
    assert cpu["flops"] <= tpu["flops"] <= 1.5 * cpu["flops"]  # 1.13-1.26 seen (XLA_FLAGS differ)
    state = tpu["param_bytes"] + tpu["opt_bytes"]
    assert state > 0 and tpu["argument_bytes"] >= state and tpu["peak_bytes"] >= state
    assert tpu["all_reduce_bytes"] == cpu["all_reduce_bytes"] >= tpu["grad_bytes"] > 0
    assert "v5e" in r.stdout and "h100" in r.stdout  # the plan read against the chips


def test_results_tables_are_what_the_committed_cache_prints(capsys):
    """benchmarks/RESULTS.md section 10's tables are the documented `--report --project v4,v5p,v6e
    --markdown` of the committed benchmarks/pod_plan.json, verbatim: a point merged into the cache
    without its tables (or a table edited by hand) fails here, not in a reader's plan."""
    pod_plan.main(["--cache", "benchmarks/pod_plan.json", "--report", "--project", "v4,v5p,v6e",
                   "--markdown"])
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("| config | chip |") and printed.count("\n") > 80
    with open("benchmarks/RESULTS.md") as f:
        assert printed in f.read()
