"""The concurrency cap and outage controllers in virtual time: no sleeping."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from pipeline.errors import ApiUnavailable
from pipeline.send.limits import Gate
from pipeline.send.pressure import (
    CAP_QUIET_S,
    FAILURES_FOR_OUTAGE,
    NOISE_STREAK,
    PROBE_S,
    OutageWatch,
    PressureControl,
)
from tests.conftest import FakeTime


def control(limit: int = 32) -> tuple[PressureControl, Gate, FakeTime, list[str]]:
    clock, notes = FakeTime(), []
    gate = Gate(limit)
    return PressureControl(gate, clock=clock, note=notes.append), gate, clock, notes


def test_a_burst_above_a_cap_settles_the_gate_just_under_it():
    ctl, gate, _, notes = control(32)
    for level in (32, 20, 11, 6, 29, 7):  # a burst of 429s from every level above the cap
        ctl.unexplained_429(level)
    assert gate.limit == 5
    for level in (1, 2, 3, 4, 5):
        ctl.answered(level)
    assert ctl.settled() == "requests in flight settled at 5 after 429s"
    assert notes and all("lowered" in n for n in notes)
    assert len(notes) == len(set(notes))  # each change said once


def test_quiet_spells_probe_up_and_the_cap_level_only_rarely():
    ctl, gate, clock, notes = control(32)
    ctl.unexplained_429(6)
    ctl.answered(5)
    assert gate.limit == 5
    clock.now += CAP_QUIET_S
    ctl.tick()
    assert gate.limit == 5  # one more would be the level that drew the 429: wait longer
    clock.now += PROBE_S
    ctl.tick()
    assert gate.limit == 6  # the probe
    ctl.unexplained_429(6)
    assert gate.limit == 5  # back under the cap, not halved
    notes_before = list(notes)
    clock.now += PROBE_S
    ctl.tick()
    ctl.unexplained_429(6)
    assert notes == notes_before  # probing at the cap is not news


def test_a_cap_that_rose_is_found_by_probing():
    ctl, gate, clock, _ = control(32)
    ctl.unexplained_429(6)
    ctl.answered(5)
    clock.now += PROBE_S
    ctl.tick()
    ctl.answered(6)  # the probe came back 2xx: the cap is higher now
    clock.now += CAP_QUIET_S
    ctl.tick()
    assert gate.limit == 7


def test_isolated_429s_from_a_safe_level_do_not_shrink_the_gate():
    ctl, gate, _, _ = control(16)
    for level in range(1, 17):
        ctl.answered(level)
    for _ in range(10):
        ctl.unexplained_429(12)  # random faults, each followed by a success
        ctl.answered(12)
    assert gate.limit == 16 and ctl.settled() is None


def test_a_streak_from_a_safe_level_means_the_cap_fell():
    ctl, gate, _, _ = control(16)
    for level in range(1, 17):
        ctl.answered(level)
    for _ in range(NOISE_STREAK):
        ctl.unexplained_429(16)
    assert gate.limit == 12  # x0.75 once this round, and under the level that drew it


def test_the_gate_never_goes_below_one():
    ctl, gate, clock, _ = control(4)
    for _ in range(10):
        ctl.unexplained_429(1)
        clock.now += 2
    assert gate.limit == 1


def watch(patience_s: float = 600) -> tuple[OutageWatch, FakeTime, list[str]]:
    clock, notes = FakeTime(), []
    return OutageWatch(patience_s, clock=clock, sleep=clock.sleep, note=notes.append), clock, notes


def test_failures_in_a_row_are_an_outage_and_a_success_ends_it():
    outage, clock, notes = watch()
    for _ in range(FAILURES_FOR_OUTAGE - 1):
        outage.failed()
    assert not outage.down
    outage.succeeded()  # one success between: not an outage
    for _ in range(FAILURES_FOR_OUTAGE):
        outage.failed()
    assert outage.down and "one probe at a time" in notes[-1]
    clock.now += 42
    outage.succeeded()
    assert not outage.down and "after 42 s: full speed" in notes[-1]


def test_probes_go_one_at_a_time_with_growing_waits():
    async def scenario() -> list[float]:
        outage, clock, _ = watch()
        for _ in range(FAILURES_FOR_OUTAGE):
            outage.failed()
        starts = []
        for _ in range(6):
            held = await outage.admit()
            assert held
            starts.append(clock.now)
            outage.failed()
            outage.release(held)
        return starts

    starts = asyncio.run(scenario())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == [1.0, 2.0, 3.0, 3.0, 3.0]  # capped: a probe within 5 s of the end


def test_a_second_attempt_waits_for_the_probe_in_flight():
    async def scenario() -> tuple[bool, bool]:
        outage, _, _ = watch()
        for _ in range(FAILURES_FOR_OUTAGE):
            outage.failed()
        first = await outage.admit()
        second = asyncio.ensure_future(outage.admit())
        await asyncio.sleep(0)
        waiting = not second.done()
        outage.succeeded()
        outage.release(first)
        await second
        return waiting, second.result()

    waiting, second_held = asyncio.run(scenario())
    assert waiting  # one probe at a time
    assert not second_held  # the outage ended while it queued: it goes on, lane free


def test_patience_without_any_success_stops_the_run():
    outage, clock, _ = watch(patience_s=60)
    clock.now += 3600
    outage.check_patience()  # long answers in flight, nothing failed: no verdict
    outage.failed()
    clock.now += 59
    outage.check_patience()
    clock.now += 2
    with pytest.raises(ApiUnavailable, match="has not answered successfully for"):
        asyncio.run(outage.admit())


def test_slow_start_grows_one_per_two_answers_to_the_jobs_concurrency():
    ctl, gate, _, _ = control(64)
    assert gate.limit == 16  # a capped gateway meets a burst of 16, not 64
    assert control(256)[1].limit == 64  # a quarter of a large concurrency
    for level in range(1, 40):
        ctl.answered(level)
    assert gate.limit == 16 + 39 // 2  # x1.5 a round: overshoots a cap by half, not double
    for level in range(40, 200):
        ctl.answered(level)
    assert gate.limit == 64 and ctl.settled() is None


def test_slow_start_ends_at_the_first_cap():
    ctl, gate, _, _ = control(64)
    ctl.unexplained_429(6)
    for level in range(1, 6):
        ctl.answered(level)
    assert gate.limit == 5


def test_a_probe_at_a_large_cap_steps_back_one_not_a_quarter():
    ctl, gate, clock, _ = control(80)  # starts at 20, a quarter
    ctl.unexplained_429(21)
    for level in range(1, 21):
        ctl.answered(level)
    clock.now += PROBE_S
    ctl.tick()
    assert gate.limit == 21
    ctl.unexplained_429(21)
    assert gate.limit == 20  # just under the level refused: 20, not 16


def test_an_answer_from_a_level_above_the_gate_raises_it_back_near_it_at_once():
    ctl, gate, _, _ = control(64)
    ctl.unexplained_429(17)  # a 429 raced the answers still on their way
    assert gate.limit == 16
    ctl.answered(20)  # sent earlier with 20 in flight, and admitted
    assert gate.limit == 19  # just under it at once; quiet spells probe the last step


def test_the_top_slot_drawing_429s_again_and_again_steps_the_gate_down_one():
    ctl, gate, _, _ = control(80)  # starts at 20
    ctl.unexplained_429(21)
    for level in range(1, 21):
        ctl.answered(level)
    assert gate.limit == 20
    for _ in range(2):
        ctl.unexplained_429(20)  # a request sent as another ended raced it
        ctl.answered(20)
    assert gate.limit == 20  # two: noise
    ctl.unexplained_429(20)
    assert gate.limit == 19  # three within a quiet spell: one fewer in flight pays
