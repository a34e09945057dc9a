"""Busy polling's decision, as both engines' loops make it: poll after
latency traffic, sleep when the traffic is bulk. The turns are made up
(time, whether the wait brought work, frames and super-frames it added), so
nothing here depends on how fast the machine is."""
import pytest

from fastpath.datapath import spin_trace

US = 1000
BUSY = 100 * US
HOLD = 2_000 * US
BATCH = 32


def test_off_never_spins():
    assert spin_trace(0, HOLD, [(0, True, 1, 0), (1, False, 0, 0), (2, True, 1, 1)]) == [False, False, False]


def test_lone_frames_spin_for_busy_poll_after_each():
    turns = [(0, True, 1, 0),                 # a ping: poll for BUSY after it
             (BUSY // 2, False, 0, 0),        # nothing yet: keep polling
             (BUSY - 1, False, 0, 0),
             (BUSY, False, 0, 0),             # BUSY has passed: sleep
             (BUSY + 10 * US, True, 2, 0),    # a reply and another request: poll again
             (2 * BUSY, False, 0, 0)]
    assert spin_trace(BUSY, HOLD, turns) == [True, True, True, False, True, True]


def test_a_superframe_stops_spinning_and_acks_do_not_restart_it():
    turns = [(0, True, 1, 0),                 # latency traffic first: spinning
             (10 * US, True, 3, 1),           # a TSO super-frame among them: bulk
             (20 * US, False, 0, 0),          # sleep, though BUSY has not passed
             (30 * US, True, 1, 0),           # a lone ACK of the transfer: still bulk
             (HOLD, True, 1, 0),              # within the hold of the super-frame
             (10 * US + HOLD, True, 1, 0),    # the hold is over: lone frames poll again
             (20 * US + HOLD, False, 0, 0)]
    assert spin_trace(BUSY, HOLD, turns) == [True, False, False, False, False, True, True]


def test_every_bulk_turn_renews_the_hold():
    turns = [(i * HOLD // 2, True, 1, 1) for i in range(6)]  # super-frames every half hold
    turns.append((3 * HOLD - 1, True, 1, 0))                 # a lone frame right after the last
    turns.append((3 * HOLD + HOLD // 2, True, 1, 0))         # and one once the hold is over
    assert spin_trace(BUSY, HOLD, turns) == [False] * 7 + [True]


@pytest.mark.parametrize("frames, spins", [(BATCH - 1, True), (BATCH, False), (4 * BATCH, False)])
def test_a_full_batch_is_bulk(frames, spins):
    assert spin_trace(BUSY, HOLD, [(0, True, frames, 0)]) == [spins]


def test_frames_count_since_the_last_turn_with_work():
    # Frames the engine accounts between turns with work (io_uring accounts
    # a round's frames when their writes leave) count for the next turn with
    # work: 20 then 12 more is a full batch, 20 and 20 in two turns is not.
    turns = [(0, True, 20, 0), (10 * US, False, 20, 0), (20 * US, True, 12, 0)]
    assert spin_trace(BUSY, HOLD, turns) == [True, True, False]
    turns = [(0, True, 20, 0), (10 * US, True, 20, 0)]
    assert spin_trace(BUSY, HOLD, turns) == [True, True]


def test_a_turn_without_work_changes_nothing():
    # An idle turn neither ends a hold early nor extends the polling.
    after_bulk = [(0, True, 1, 1), (HOLD - 1, False, 0, 0), (HOLD, False, 0, 0)]
    assert spin_trace(10 * HOLD, HOLD, after_bulk) == [False, False, True]
    after_ping = [(0, True, 1, 0), (BUSY - 1, False, 0, 0), (BUSY + 1, False, 0, 0)]
    assert spin_trace(BUSY, HOLD, after_ping) == [True, True, False]


def test_without_a_hold_bulk_polls_as_any_traffic():
    turns = [(0, True, 1, 1), (10 * US, True, 4 * BATCH, 0), (20 * US, False, 0, 0), (20 * US + BUSY, False, 0, 0)]
    assert spin_trace(BUSY, 0, turns) == [True, True, True, False]


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="not below 0"):
        spin_trace(BUSY, HOLD, [(0, True, -1, 0)])
