# Back-pressure on a storming port: storm control drops all but a bucket's
# worth of a storm's frames, but each dropped frame was still read (a system
# call, or a read in the io_uring engine) and decided first, so a storm spent
# the loop's core on the attacker. When PAUSE_AFTER frames in a row from a
# port were dropped by its storm buckets (its bucket is dry and it keeps
# offering), the loop stops reading that port until the bucket has refilled;
# meanwhile the TAP's queue fills and the sending container's kernel drops
# its frames, at its own cost (counted as tx_dropped on its interface).
#
#   how long    until the bucket that dropped holds a batch's worth of frames
#               (BATCH, or its whole burst if smaller): the first read after
#               the pause passes a full batch, so pausing forwards no fewer
#               storm frames than the limit allows, and each pause costs one
#               batch read to pass, half a batch to notice; never longer than
#               PAUSE_MAX_MS, so a low limit cannot hold the port's other
#               frames (its unicast) back for long. The defaults (1000/s,
#               burst 100) pause 32 ms.
#   which       only a port that offers nearly nothing else: any frame from
#               it that is not a storm drop ends the run, so a port mixing
#               storm drops with forwarded frames is never paused.
#   the engine  pause() takes the port out of its wait set (poll: epoll with
#               no events; io_uring: its multishot read cancelled), resume()
#               puts it back; the loop's wait wakes for the earliest resume.
#
# The ingress policer (rate_limited_rx) does not pause a port: a paused port's
# frames queue in the TAP unbounded by TCP's small-queue limits (the TAP lets
# go of their socket memory as it queues them), so a shaper made this way
# would add up to seconds of queueing at a low rate, and the policer already
# gives TCP 0.99 of its rate (bench/ratelimit.py).
#
# Pausing changes which frames are read, never what the decision does with a
# frame: trace and the model know nothing of it.
from libc.stdint cimport int64_t, uint32_t

from fastpath.frame cimport DROP_STORM_BROADCAST, DROP_STORM_UNKNOWN_UNICAST

cdef enum:
    PAUSE_AFTER = BATCH // 2       # storm drops in a row that pause a port
    PAUSE_MAX_MS = 50              # the longest pause


cdef inline int64_t refill_ms(const bucket_t *b, int64_t now) noexcept nogil:
    """Milliseconds until b holds a batch's worth of frames (or its burst), in [1, PAUSE_MAX_MS]."""
    cdef int64_t want = min(b.burst, <int64_t>BATCH * 1000) - bucket_level(b, now)
    cdef int64_t ms = (want + b.rate - 1) // b.rate if want > 0 else 1
    return min(max(ms, 1), PAUSE_MAX_MS)


cdef void sw_pause(sw_t *sw, uint32_t idx, int64_t until) noexcept nogil:
    sw.limits[idx].resume_ms = until
    sw.pctr[<size_t>idx * PC_COUNT + PC_PAUSED] += 1
    if sw.npaused == 0 or until < sw.next_resume_ms:
        sw.next_resume_ms = until
    sw.npaused += 1
    sw.eng.pause(sw.engine, idx)


cdef void sw_forget_pause(sw_t *sw, uint32_t idx) noexcept nogil:
    """Port idx is going away (or dead): drop its pause without telling the engine."""
    if sw.limits[idx].resume_ms:
        sw.limits[idx].resume_ms = 0
        sw.npaused -= 1


cdef void sw_resume(sw_t *sw, uint32_t idx, bint from_loop) noexcept nogil:
    """Read port idx again if it is paused (lock held)."""
    if sw.limits[idx].resume_ms == 0:
        return
    sw_forget_pause(sw, idx)
    sw.limits[idx].dry_run = 0
    if sw.ports[idx].state == PORT_UP:
        sw.eng.resume(sw.engine, idx, from_loop)


cdef inline void storm_pressure(sw_t *sw, uint32_t idx, const decision_t *d, int64_t now) noexcept nogil:
    """After the decision on a frame from port idx, which has storm control."""
    cdef port_limits *l = &sw.limits[idx]
    if d.verdict != V_DROP or d.reason < DROP_STORM_BROADCAST or d.reason > DROP_STORM_UNKNOWN_UNICAST:
        l.dry_run = 0
        return
    l.dry_run += 1
    if l.dry_run >= PAUSE_AFTER and sw.limits[idx].resume_ms == 0:
        sw_pause(sw, idx, now + refill_ms(&l.storm[d.reason - DROP_STORM_BROADCAST], now))


cdef inline bint sw_resume_due(const sw_t *sw, int64_t now) noexcept nogil:
    return sw.npaused != 0 and now >= sw.next_resume_ms


cdef inline int sw_wait_ms(const sw_t *sw, int64_t now, int longest) noexcept nogil:
    """How long an idle engine may sleep at now: longest, or less so it wakes when the first pause is over."""
    if sw.npaused == 0:
        return longest
    if sw.next_resume_ms <= now:
        return 0
    return <int>min(<int64_t>longest, sw.next_resume_ms - now)


cdef void sw_resume_ports(sw_t *sw, int64_t now) noexcept nogil:
    """Resume every port whose pause is over (the loop, lock held)."""
    cdef uint32_t idx
    cdef int64_t r, first = 0
    if not sw_resume_due(sw, now):
        return
    for idx in range(sw.max_ports):
        r = sw.limits[idx].resume_ms
        if r == 0:
            continue
        if r <= now:
            sw_resume(sw, idx, True)
        elif first == 0 or r < first:
            first = r
    sw.next_resume_ms = first
