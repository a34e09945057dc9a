# Port limits: storm control and rate limits, token buckets kept per port in
# C and refilled from the loop's own clock (the `now` each turn reads once),
# so no frame costs a system call.
#
#   storm control   frames a port floods, by kind: broadcast, multicast and
#                   unknown unicast (a unicast frame flooded because its
#                   destination is not known), frames/s each; asked by
#                   decide() when its verdict is a flood; over the limit the
#                   frame is dropped (storm_broadcast, storm_multicast,
#                   storm_unknown_unicast).
#   rate limit      a policer per direction: bytes/s with a burst, and
#                   frames/s. Ingress (frames the port sends) is policed as
#                   the loop reads them, before the decision (rate_limited_rx);
#                   egress (frames written to the port) as they are written
#                   (rate_limited_tx). A TSO super-frame is charged for what
#                   its segments carry on the wire: every segment's headers,
#                   and one frame per segment.
#
# A bucket holds tokens in thousandths of a unit (byte or frame), so a refill
# of `rate` units/s over `ms` milliseconds is ms * rate, exactly. A frame
# passes while the bucket is above zero and is charged in full: a frame larger
# than what is left drives it below zero (a debt repaid before the next frame
# passes), so a 64 KB super-frame passes a small burst and the long-run rate
# still holds: at most rate * T + burst + one frame in any T.
#
# A port with no limits pays one flag test per frame at each hook.
from libc.stdint cimport int64_t, uint8_t, uint32_t

from fastpath.frame cimport (DROP_NONE, DROP_STORM_BROADCAST, DROP_STORM_MULTICAST, DROP_STORM_UNKNOWN_UNICAST,
                             VNET_GSO_NONE, VNET_GSO_UDP_L4, drop_reason, vnet_info)

cdef enum:
    LIM_STORM = 1                  # port_limits flags: some storm bucket is set
    LIM_RATE_RX = 2                # the port's frames are policed as they arrive
    LIM_RATE_TX = 4                # frames to the port are policed as they leave
    STORM_BROADCAST = 0
    STORM_MULTICAST = 1
    STORM_UNKNOWN_UNICAST = 2
    STORM_KINDS = 3

cdef struct bucket_t:
    int64_t rate                   # units per second (= thousandths per ms); 0: no limit
    int64_t burst                  # thousandths of a unit
    int64_t full_ms                # an idle time that refills the bucket whole (no overflow past it)
    int64_t tokens                 # thousandths of a unit; below zero: a debt
    int64_t last_ms

cdef struct port_limits:
    uint8_t flags
    uint32_t dry_run               # its frames in a row that its storm buckets dropped (pause.pxi)
    # Paused (pause.pxi): not read until the loop's clock reaches it; 0: read.
    # Here rather than in port_t, which stays 32 bytes: every frame indexes it.
    int64_t resume_ms
    bucket_t storm[STORM_KINDS]    # frames/s
    bucket_t rx_bytes
    bucket_t rx_frames
    bucket_t tx_bytes
    bucket_t tx_frames


cdef inline void bucket_set(bucket_t *b, int64_t rate, int64_t burst, int64_t now) noexcept nogil:
    """A bucket of `rate` units/s holding at most `burst` units, full now."""
    b.rate = rate
    b.burst = burst * 1000
    b.full_ms = (b.burst // rate + 1) if rate > 0 else 0
    b.tokens = b.burst
    b.last_ms = now


cdef inline int64_t bucket_level(const bucket_t *b, int64_t now) noexcept nogil:
    """The bucket's tokens refilled up to now, without changing it."""
    cdef int64_t elapsed = now - b.last_ms
    if elapsed <= 0:
        return b.tokens
    if elapsed >= b.full_ms:
        return b.burst
    return min(b.burst, b.tokens + elapsed * b.rate)


cdef inline bint bucket_take(bucket_t *b, int64_t cost, int64_t now, bint dry) noexcept nogil:
    """Whether a frame costing `cost` units passes (charged unless dry). A bucket without a rate passes all."""
    cdef int64_t level
    if b.rate == 0:
        return True
    level = bucket_level(b, now)
    if dry:
        return level > 0
    b.last_ms = now if now > b.last_ms else b.last_ms
    if level <= 0:
        b.tokens = level
        return False
    b.tokens = level - cost * 1000
    return True


cdef inline drop_reason storm_check(port_limits *l, const uint8_t *dst, int64_t now, bint dry) noexcept nogil:
    """Storm control of a frame the decision floods (decide.pxi)."""
    cdef uint32_t kind
    if dst[0] & 1:
        kind = STORM_BROADCAST if (dst[0] & dst[1] & dst[2] & dst[3] & dst[4] & dst[5]) == 0xFF else STORM_MULTICAST
    else:
        kind = STORM_UNKNOWN_UNICAST
    if bucket_take(&l.storm[kind], 1, now, dry):
        return DROP_NONE
    return <drop_reason>(DROP_STORM_BROADCAST + kind)


cdef inline void wire_cost(const uint8_t *data, uint32_t length, const vnet_info *vi, int64_t *nbytes,
                           int64_t *nframes) noexcept nogil:
    """What a frame carries on the wire: a TSO super-frame as its segments would,
    each with a copy of the headers (Ethernet, IP and TCP or UDP, ending where
    the L4 header that csum_start points at ends)."""
    cdef uint32_t hdr, payload, nseg
    nbytes[0] = length
    nframes[0] = 1
    if vi.gso_type == VNET_GSO_NONE or vi.gso_size == 0:
        return
    hdr = vi.csum_start
    if vi.gso_type == VNET_GSO_UDP_L4:
        hdr += 8
    elif <uint32_t>vi.csum_start + 13 <= length:
        hdr += max(20, (data[vi.csum_start + 12] >> 4) * 4)  # TCP's data offset, at least the fixed header
    else:
        return
    if hdr >= length:
        return
    payload = length - hdr
    nseg = (payload + vi.gso_size - 1) // vi.gso_size
    nbytes[0] = <int64_t>length + <int64_t>(nseg - 1) * hdr
    nframes[0] = nseg


cdef inline bint police(bucket_t *bytes_b, bucket_t *frames_b, const uint8_t *data, uint32_t length,
                        const vnet_info *vi, int64_t now) noexcept nogil:
    """One direction's policer: whether the frame passes both of its buckets."""
    cdef int64_t nbytes, nframes
    wire_cost(data, length, vi, &nbytes, &nframes)
    return police_cost(bytes_b, frames_b, nbytes, nframes, now)


cdef inline bint police_cost(bucket_t *bytes_b, bucket_t *frames_b, int64_t nbytes, int64_t nframes,
                             int64_t now) noexcept nogil:
    """Whether nbytes in nframes on the wire pass both buckets (charged if so)."""
    # Checked before either is charged: a frame dropped by one costs the other nothing.
    if (bytes_b.rate and bucket_level(bytes_b, now) <= 0) or (frames_b.rate and bucket_level(frames_b, now) <= 0):
        return False
    bucket_take(bytes_b, nbytes, now, False)
    bucket_take(frames_b, nframes, now, False)
    return True
