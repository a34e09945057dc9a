"""The event log's rate limit, on a clock the test moves (no root needed)."""
from __future__ import annotations

import logging

import pytest

from vswitch.eventlog import EventLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def events(clock: Clock) -> EventLog:
    return EventLog(lambda out: f"port p{out}", burst=3, window_s=10.0, clock=clock)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vswitch.events"]


def test_a_storm_that_stops_is_summed_up_when_its_window_ends(events: EventLog, clock: Clock,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vswitch.events")
    for i in range(20):
        events.record("mac_moved", "blue", f"02:00:00:00:00:{i:02x}", 1, 2)
    assert len(lines(caplog)) == 3
    clock.now += 9.9
    events.tick()  # the window is still open: nothing yet
    assert len(lines(caplog)) == 3
    clock.now += 0.1
    events.tick()  # no further event comes, and the summary is written all the same
    assert lines(caplog)[3:] == ["17 more mac_moved events in the last 10s were not logged"]
    clock.now += 60
    events.tick()
    assert len(lines(caplog)) == 4  # once
    events.record("mac_moved", "blue", "02:00:00:00:00:99", 2, 1)  # a new window logs again
    assert lines(caplog)[4] == "MAC 02:00:00:00:00:99 in network blue moved from port p2 to port p1"


def test_overwritten_events_are_summed_up_by_their_number(events: EventLog, clock: Clock,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vswitch.events")
    for _ in range(7):
        events.lost(100)
    assert lines(caplog) == ["100 datapath events were overwritten before they could be logged"] * 3
    clock.now += 10
    events.tick()
    assert lines(caplog)[3:] == ["400 more datapath events were overwritten in the last 10s"]


def test_flush_writes_what_a_window_still_holds(events: EventLog, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vswitch.events")
    for _ in range(5):
        events.record("unknown_vni", None, None, 0x0100007F, 42)
    events.flush()  # at stop, before the window ends
    assert lines(caplog)[-1] == "2 more unknown_vni events in the last 10s were not logged"
    assert events.lines == 4
